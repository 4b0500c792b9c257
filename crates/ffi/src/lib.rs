//! # portcullis-ffi: the Portcullis engine behind a C ABI
//!
//! Gateways written in C, Go, Python or anything else that can call C reuse
//! the engine `pg-proxy` uses, instead of re-implementing policy: the same
//! parse by PostgreSQL's own grammar, the same rules, the same masks, the
//! same token checks. The library is `libportcullis.so` (or `.dylib`) and
//! `libportcullis.a`; its header is `include/portcullis.h`, generated from
//! this crate by a pinned cbindgen and checked by a test.
//!
//! ```text
//!   your gateway ──(policy TOML)──────────▶ portcullis_engine_new ──▶ portcullis_engine
//!                ──(JWT, JWKS, now)───────▶ portcullis_verify_jwt ──▶ portcullis_identity
//!                ──(engine, identity, session, SQL)──▶ portcullis_decide ──▶ portcullis_decision
//!                ──(decision, result columns)──▶ portcullis_masker_new ──▶ portcullis_masker
//!                ──(row cells, buffer)────▶ portcullis_mask_row ──▶ masked cells
//! ```
//!
//! ## Conventions
//!
//! - **Handles.** Every object is an opaque pointer made by a `_new`
//!   function (or `portcullis_decide`, `portcullis_verify_jwt`) and released
//!   by its `_free`, which accepts NULL.
//! - **Results.** Functions that can fail return a `portcullis_result`:
//!   `PORTCULLIS_RESULT_OK` (0) or a numbered code that never changes
//!   meaning. [`portcullis_error`] writes the message into the caller's
//!   buffer; for a policy it names the line and column
//!   (`policy.toml:4:1: unknown field ...`), and
//!   [`portcullis_error_location`] gives them as numbers. The detail is kept
//!   per thread, for the last failure.
//! - **Out-pointers** are written only on success. On failure they keep
//!   whatever the caller put there.
//! - **Text** arguments are pointer and length (UTF-8, no NUL needed; SQL may
//!   hold NUL bytes, which the engine judges like any other byte). Text that
//!   is not UTF-8 gives `PORTCULLIS_RESULT_INVALID_UTF8`. NULL with length 0
//!   is the empty text; NULL with a length gives
//!   `PORTCULLIS_RESULT_NULL_PARAMETER`, as does a NULL handle.
//! - **Strings out** are `portcullis_str` (pointer and length, not
//!   NUL-terminated), borrowed from the handle they came from.
//! - **Panics** never cross into C: every export runs behind a boundary
//!   that turns one into `PORTCULLIS_RESULT_PANIC` (accessors give their
//!   documented fallback, which for a verdict is deny).
//! - **Time** is an argument (`portcullis_verify_jwt`'s `now_unix_seconds`);
//!   the library reads no clock, file or socket, and takes no setting from
//!   the environment. (A panic, which is a bug, is reported on stderr by
//!   Rust's panic hook, as in any Rust program, before the boundary turns it
//!   into a result code.)
//! - **Booleans in structs** (`portcullis_column.binary`,
//!   `portcullis_cell.is_null`) are bytes, nonzero for true, so that no
//!   value a caller leaves in them is undefined behaviour.
//!
//! ## Threads
//!
//! Engines, identities, key sets, decisions and maskers are immutable once
//! made: any number of threads may use one at once (the Rust types are
//! `Send + Sync`; the engine's decision cache is internally sharded and
//! locked). A session is the state of one client connection: functions
//! that take `const portcullis_session *` may share it, the ones that take
//! `portcullis_session *` (the setters, `portcullis_session_apply`) need it
//! to themselves. Free a handle once, after every thread is done with it.
//! The failure detail behind [`portcullis_error`] is per thread.
//!
//! ## Example
//!
//! The C shape of a gateway's statement path (see `examples/c/decide.c`):
//!
//! ```c
//! portcullis_engine *engine;
//! portcullis_identity *agent;
//! portcullis_decision *d;
//! portcullis_engine_new(policy, policy_len, "policy.toml", 11, NULL, 0, &engine);
//! portcullis_identity_new(who, strlen(who), &agent);
//! portcullis_decide(engine, agent, NULL, sql, strlen(sql), &d);
//! switch (portcullis_decision_verdict(d)) {
//!     case PORTCULLIS_VERDICT_ALLOW: break; // forward, capping rows at portcullis_decision_max_rows(d)
//!     case PORTCULLIS_VERDICT_REQUIRE_APPROVAL: break; // hold for a person
//!     default: break; // refuse with portcullis_decision_reason(d)
//! }
//! portcullis_decision_free(d);
//! ```
//!
//! The same from Rust, through the C ABI (a Rust program would use
//! `policy-core` directly; this shows the calls):
//!
//! ```
//! use portcullis::*;
//! let policy = "version = 1\n[[rule]]\nname = \"read\"\neffect = \"allow\"\nclasses = [\"read\"]\n";
//! let who = r#"{"subject": "alice"}"#;
//! let sql = "SELECT 1";
//! let (mut engine, mut alice, mut d) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
//! // SAFETY: every pointer is to live local data with its exact length.
//! unsafe {
//!     assert_eq!(portcullis_engine_new(policy.as_ptr().cast(), policy.len(), std::ptr::null(), 0,
//!                                      std::ptr::null(), 0, &mut engine), portcullis_result::Ok);
//!     assert_eq!(portcullis_identity_new(who.as_ptr().cast(), who.len(), &mut alice), portcullis_result::Ok);
//!     assert_eq!(portcullis_decide(engine, alice, std::ptr::null(), sql.as_ptr().cast(), sql.len(), &mut d),
//!                portcullis_result::Ok);
//!     assert_eq!(portcullis_decision_verdict(d), portcullis_verdict::Allow);
//!     portcullis_decision_free(d);
//!     portcullis_identity_free(alice);
//!     portcullis_engine_free(engine);
//! }
//! ```

#![allow(non_camel_case_types, reason = "the C names of the types are the Rust names")]

mod boundary;
mod decision;
mod definitions;
mod engine;
mod error;
mod identity;
mod masker;
mod session;

pub use boundary::portcullis_str;
pub use decision::{
    portcullis_decide, portcullis_decision, portcullis_decision_free, portcullis_decision_json,
    portcullis_decision_max_rows, portcullis_decision_reason, portcullis_decision_rule,
    portcullis_decision_statement_count, portcullis_decision_verdict, portcullis_verdict,
};
pub use definitions::{
    portcullis_definitions, portcullis_definitions_count, portcullis_definitions_free, portcullis_definitions_new,
    portcullis_definitions_unavailable, portcullis_session_set_definitions,
};
pub use engine::{portcullis_engine, portcullis_engine_free, portcullis_engine_new, portcullis_version};
pub use error::{portcullis_error, portcullis_error_location, portcullis_result};
pub use identity::{
    portcullis_identity, portcullis_identity_free, portcullis_identity_json, portcullis_identity_new,
    portcullis_identity_subject, portcullis_jwks, portcullis_jwks_free, portcullis_jwks_key_count, portcullis_jwks_new,
    portcullis_verify_jwt,
};
pub use masker::{
    portcullis_cell, portcullis_column, portcullis_mask_row, portcullis_masker, portcullis_masker_free,
    portcullis_masker_is_noop, portcullis_masker_new, portcullis_masker_retyped,
};
pub use session::{
    portcullis_session, portcullis_session_add_prepared, portcullis_session_apply, portcullis_session_free,
    portcullis_session_new, portcullis_session_set_search_path, portcullis_session_set_standard_conforming_strings,
    portcullis_session_set_user,
};

/// Handles are shared between threads as the crate docs say: the compiler
/// holds them to it.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<portcullis_engine>();
    send_sync::<portcullis_identity>();
    send_sync::<portcullis_jwks>();
    send_sync::<portcullis_decision>();
    send_sync::<portcullis_masker>();
    send_sync::<portcullis_session>();
};

#[cfg(test)]
mod tests {
    /// Every export runs its body behind the panic boundary: a source scan,
    /// so that a new export without one fails here rather than aborting a
    /// host process some day.
    #[test]
    fn every_export_is_behind_the_panic_boundary() {
        const SOURCES: [(&str, &str); 6] = [
            ("decision.rs", include_str!("decision.rs")),
            ("engine.rs", include_str!("engine.rs")),
            ("error.rs", include_str!("error.rs")),
            ("identity.rs", include_str!("identity.rs")),
            ("masker.rs", include_str!("masker.rs")),
            ("session.rs", include_str!("session.rs")),
        ];
        // `decision::with` is `boundary::value` on a decision handle.
        const GUARDS: [&str; 6] = [
            "boundary::call(",
            "boundary::call_quiet(",
            "boundary::value(",
            "boundary::free(",
            "boundary::guarded(",
            "with(decision, ",
        ];
        let mut exports = 0;
        for (file, text) in SOURCES {
            for (at, _) in text.match_indices("extern \"C\" fn ") {
                let rest = text.get(at..).unwrap_or_default();
                let name: String = rest["extern \"C\" fn ".len()..].chars().take_while(|c| *c != '(').collect();
                // The body: from the first line that opens it to the closing brace at column 0.
                let body = rest.split_once(" {\n").map_or("", |(_, b)| b.split("\n}\n").next().unwrap_or(""));
                exports += 1;
                if name == "portcullis_version" {
                    assert!(!body.contains('(') || body.contains("concat!("), "{file}: {name} must stay a constant");
                    continue;
                }
                let first = body.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with("//"));
                assert!(
                    first.is_some_and(|l| GUARDS.iter().any(|g| l.contains(g)))
                        || (name == "portcullis_error" && body.contains("boundary::guarded(")),
                    "{file}: `{name}` does not start behind the panic boundary: {first:?}"
                );
            }
        }
        assert!(exports >= 30, "found only {exports} exports: the scan is broken");
    }
}
