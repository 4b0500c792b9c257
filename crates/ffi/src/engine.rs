//! `portcullis_engine`: a compiled policy.

use std::ffi::c_char;

use policy_core::{Engine, Keys, Policy};

use crate::boundary::{self, Out};
use crate::error::portcullis_result;

/// A compiled policy (an opaque handle). Build it once with
/// `portcullis_engine_new` and share it: every function that takes a
/// `const portcullis_engine *` may be called from several threads at once.
/// Free it with `portcullis_engine_free` once no thread uses it.
pub struct portcullis_engine {
    pub(crate) engine: Engine,
}

/// Loads and compiles a policy.
///
/// - `policy`, `policy_len`: the policy's TOML text (UTF-8, not
///   NUL-terminated).
/// - `name`, `name_len`: the name error messages use for the text, such as
///   its file name; empty gives `policy`.
/// - `pseudonym_key`, `pseudonym_key_len`: the key of the `hash` masking
///   strategy; NULL and 0 when the policy has none.
///
/// On success writes the new engine to `*out_engine`. A policy error returns
/// `PORTCULLIS_RESULT_POLICY_FORMAT`, `_POLICY_INVALID` or `_POLICY_KEYS`;
/// `portcullis_error` then gives
/// `name:line:column: what`, and
/// `portcullis_error_location` the line
/// and column.
///
/// ```c
/// portcullis_engine *engine = NULL;
/// portcullis_result r = portcullis_engine_new(text, text_len, "policy.toml", 11, NULL, 0, &engine);
/// ```
///
/// # Safety
///
/// Each pointer must be NULL or valid for reads of its length;
/// `out_engine` must be valid for a write.
#[no_mangle]
pub unsafe extern "C" fn portcullis_engine_new(
    policy: *const c_char,
    policy_len: usize,
    name: *const c_char,
    name_len: usize,
    pseudonym_key: *const u8,
    pseudonym_key_len: usize,
    out_engine: *mut *mut portcullis_engine,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract, argument by argument.
        let (out, text, name, key) = unsafe {
            (
                Out::new(out_engine)?,
                boundary::text(policy, policy_len, "the policy")?,
                boundary::text(name, name_len, "the policy name")?,
                boundary::bytes(pseudonym_key, pseudonym_key_len)?,
            )
        };
        let name = if name.is_empty() { "policy" } else { name };
        let policy = Policy::from_toml_str(text, name)?;
        let keys = Keys { pseudonym_key: (!key.is_empty()).then(|| key.to_vec()) };
        let engine = Engine::new(policy, keys)?;
        out.write(boundary::into_handle(portcullis_engine { engine }));
        Ok(())
    })
}

/// Frees an engine. NULL does nothing. Decisions, sessions and maskers made
/// from it stay valid: they hold what they need.
///
/// # Safety
///
/// `engine` must be NULL or from `portcullis_engine_new`, not yet freed,
/// and not in use by another thread.
#[no_mangle]
pub unsafe extern "C" fn portcullis_engine_free(engine: *mut portcullis_engine) {
    // SAFETY: forwarded contract.
    unsafe { boundary::free(engine) }
}

/// The library's name and version, NUL-terminated, static.
///
/// ```c
/// printf("%s\n", portcullis_version());   // portcullis-ffi/0.1.0
/// ```
#[no_mangle]
pub extern "C" fn portcullis_version() -> *const c_char {
    concat!("portcullis-ffi/", env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast::<c_char>()
}
