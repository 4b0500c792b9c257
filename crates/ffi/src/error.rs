//! Result codes, and the message behind the last failure of each thread.

use std::cell::RefCell;
use std::ffi::c_char;

use policy_core::{IdentityError, PolicyError};

/// What a call did. `PORTCULLIS_RESULT_OK` is 0; every other code is a
/// failure, numbered in blocks (1000: the call itself, 2000: policies,
/// 3000: identities and key sets, 3100: tokens). A number is never reused
/// for another meaning.
///
/// `portcullis_error` turns a code into a message.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum portcullis_result {
    /// Success.
    Ok = 0,

    /// A bug inside the library was caught at the boundary; nothing was
    /// written to the out-pointers. Please report it.
    Panic = 1000,
    /// A pointer that must not be NULL was NULL.
    NullParameter = 1001,
    /// A text argument is not UTF-8.
    InvalidUtf8 = 1002,
    /// The caller's buffer is too small for the answer; nothing was
    /// written. Call again with a larger buffer.
    InsufficientSize = 1003,
    /// An argument is out of range or not what the function reads (an
    /// index past the end, a length or count whose bytes exceed
    /// `PTRDIFF_MAX`, a `search_path` that does not parse, a value that
    /// overlaps the output buffer).
    InvalidParameter = 1004,

    /// The policy text is not TOML, or not the shape of a policy.
    PolicyFormat = 2000,
    /// A policy value is well-formed but cannot be used.
    PolicyInvalid = 2001,
    /// The keys given with the policy do not fit it.
    PolicyKeys = 2002,

    /// The identity JSON is not `{"subject": ..., "groups": [...], "actor": {...}}`.
    IdentityJson = 3000,
    /// The JWKS document is not a usable key set.
    JwksInvalid = 3001,

    /// The token is longer than the policy accepts.
    TokenOversized = 3100,
    /// The token is not three base64url parts holding JSON.
    TokenMalformed = 3101,
    /// The token is unsigned (`alg: none`).
    TokenUnsigned = 3102,
    /// The token's algorithm is not accepted.
    TokenUnsupportedAlgorithm = 3103,
    /// The token's algorithm does not match its key.
    TokenAlgorithmMismatch = 3104,
    /// The token names no key while the key set holds several.
    TokenMissingKeyId = 3105,
    /// The token names a key the key set does not hold.
    TokenUnknownKeyId = 3106,
    /// The key set holds no usable key.
    TokenNoKeys = 3107,
    /// The token has a critical header extension the engine does not implement.
    TokenCriticalHeader = 3108,
    /// The signature does not verify.
    TokenBadSignature = 3109,
    /// The token has no valid expiry.
    TokenMissingExpiry = 3110,
    /// The token has expired.
    TokenExpired = 3111,
    /// The token is not valid yet (`nbf`).
    TokenNotYetValid = 3112,
    /// The token was issued in the future (`iat`).
    TokenIssuedInFuture = 3113,
    /// The token's issuer is not the configured one.
    TokenWrongIssuer = 3114,
    /// The token's audience is not a configured one.
    TokenWrongAudience = 3115,
    /// The token has no subject.
    TokenMissingSubject = 3116,
    /// The token was refused for a reason this version has no code for.
    TokenRejected = 3199,

    /// The definitions JSON is not `{"views": [...], "functions": [...]}`.
    DefinitionsJson = 3300,
}

impl portcullis_result {
    /// The fixed message of a code.
    fn message(self) -> &'static str {
        use portcullis_result as R;
        match self {
            R::Ok => "ok",
            R::Panic => "a bug in the portcullis library was caught at the C boundary; please report it",
            R::NullParameter => "a required pointer argument was NULL",
            R::InvalidUtf8 => "a text argument is not valid UTF-8",
            R::InsufficientSize => "the output buffer is too small",
            R::InvalidParameter => "an argument is out of range",
            R::PolicyFormat => "the policy is not valid TOML or not the shape of a policy",
            R::PolicyInvalid => "the policy holds a value that cannot be used",
            R::PolicyKeys => "the keys do not fit the policy",
            R::IdentityJson => "the identity is not valid identity JSON",
            R::JwksInvalid => "the JWKS document is not a usable key set",
            R::TokenOversized => "the token is longer than accepted",
            R::TokenMalformed => "malformed token",
            R::TokenUnsigned => "unsigned token (alg \"none\")",
            R::TokenUnsupportedAlgorithm => "the token's algorithm is not accepted",
            R::TokenAlgorithmMismatch => "the token's algorithm does not match its key",
            R::TokenMissingKeyId => "the token names no key (kid) and the key set holds several",
            R::TokenUnknownKeyId => "the token names a key the key set does not hold",
            R::TokenNoKeys => "the key set holds no usable key",
            R::TokenCriticalHeader => "the token has an unsupported critical header extension",
            R::TokenBadSignature => "bad signature",
            R::TokenMissingExpiry => "token has no valid expiry (exp)",
            R::TokenExpired => "token expired",
            R::TokenNotYetValid => "token not valid yet (nbf)",
            R::TokenIssuedInFuture => "token issued in the future (iat)",
            R::TokenWrongIssuer => "wrong issuer",
            R::TokenWrongAudience => "wrong audience",
            R::TokenMissingSubject => "token has no subject claim",
            R::TokenRejected => "token rejected",
            R::DefinitionsJson => "the definitions are not valid definitions JSON",
        }
    }
}

/// A failure inside the library: its code, and what exactly went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error {
    pub(crate) code: portcullis_result,
    pub(crate) message: String,
    /// 1-based line and column in the caller's text (policy errors).
    pub(crate) location: Option<(usize, usize)>,
}

impl Error {
    pub(crate) fn new(code: portcullis_result, message: impl Into<String>) -> Self {
        Error { code, message: message.into(), location: None }
    }
}

impl From<portcullis_result> for Error {
    fn from(code: portcullis_result) -> Self {
        Error::new(code, code.message())
    }
}

impl From<PolicyError> for Error {
    fn from(e: PolicyError) -> Self {
        let code = match &e {
            PolicyError::Format { .. } => portcullis_result::PolicyFormat,
            PolicyError::Invalid { .. } => portcullis_result::PolicyInvalid,
            _ => portcullis_result::PolicyKeys,
        };
        let location = e.location().map(|l| (l.line, l.column));
        Error { code, message: e.to_string(), location }
    }
}

impl From<IdentityError> for Error {
    fn from(e: IdentityError) -> Self {
        use portcullis_result as R;
        use IdentityError as E;
        let code = match &e {
            E::Oversized { .. } => R::TokenOversized,
            E::Malformed(_) => R::TokenMalformed,
            E::Unsigned => R::TokenUnsigned,
            E::UnsupportedAlgorithm(_) => R::TokenUnsupportedAlgorithm,
            E::AlgorithmMismatch { .. } => R::TokenAlgorithmMismatch,
            E::MissingKeyId => R::TokenMissingKeyId,
            E::UnknownKeyId(_) => R::TokenUnknownKeyId,
            E::NoKeys => R::TokenNoKeys,
            E::CriticalHeader(_) => R::TokenCriticalHeader,
            E::BadSignature => R::TokenBadSignature,
            E::MissingExpiry => R::TokenMissingExpiry,
            E::Expired => R::TokenExpired,
            E::NotYetValid => R::TokenNotYetValid,
            E::IssuedInFuture => R::TokenIssuedInFuture,
            E::WrongIssuer => R::TokenWrongIssuer,
            E::WrongAudience => R::TokenWrongAudience,
            E::MissingSubject(_) => R::TokenMissingSubject,
            E::InvalidJwks(_) => R::JwksInvalid,
            _ => R::TokenRejected,
        };
        Error::new(code, e.to_string())
    }
}

thread_local! {
    /// The last failure on this thread (its code names which call it belongs to).
    static LAST: RefCell<Option<Error>> = const { RefCell::new(None) };
}

/// Records `error` as this thread's last failure and returns its code.
pub(crate) fn record(error: Error) -> portcullis_result {
    let code = error.code;
    // A thread being torn down has no slot left; the code still says what happened.
    let _ = LAST.try_with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            *last = Some(error);
        }
    });
    code
}

/// The detail of this thread's last failure, when it failed with `code`.
fn last_with(code: portcullis_result) -> Option<Error> {
    LAST.try_with(|last| last.try_borrow().ok().and_then(|l| l.clone()).filter(|e| e.code == code)).ok().flatten()
}

/// Writes the message of `result` into `buf`, NUL-terminated, and stores
/// the number of bytes written (without the NUL) in `*out_written`.
///
/// When the calling thread's most recent failure returned this same code,
/// the message is that failure's own: for a policy it starts with
/// `name:line:column:`, for a token it says which check refused it (never
/// the token). Otherwise it is the code's fixed message. A message longer
/// than `len - 1` bytes is cut at a character boundary. An unknown code
/// gets "unknown result code N".
///
/// With a NULL `buf` or a `len` of 0 nothing is written, not even
/// `*out_written`; `out_written` may be NULL. This function and
/// `portcullis_error_location` never replace the failure they describe.
///
/// ```c
/// char msg[512];
/// size_t n;
/// portcullis_result r = portcullis_engine_new(text, strlen(text), "policy.toml", 11, NULL, 0, &engine);
/// if (r != PORTCULLIS_RESULT_OK) {
///     portcullis_error(r, msg, sizeof msg, &n);
///     fprintf(stderr, "error %u: %s\n", r, msg);   // policy.toml:4:1: unknown field `efect` ...
/// }
/// ```
///
/// # Safety
///
/// `buf` must be valid for writes of `len` bytes; `out_written`, when not
/// NULL, must be valid for a write.
#[no_mangle]
pub unsafe extern "C" fn portcullis_error(result: u32, buf: *mut c_char, len: usize, out_written: *mut usize) {
    if buf.is_null() || len == 0 {
        return;
    }
    // SAFETY: `buf` holds `len >= 1` bytes: an empty message stands even if
    // what follows fails.
    unsafe { *buf = 0 };
    crate::boundary::guarded(|| {
        let message = match code_of(result) {
            Some(code) => last_with(code).map(|e| e.message).unwrap_or_else(|| code.message().to_string()),
            None => format!("unknown result code {result}"),
        };
        let mut n = message.len().min(len - 1);
        while !message.is_char_boundary(n) {
            n -= 1;
        }
        // SAFETY: the caller guarantees `buf` holds `len` bytes, and
        // `n + 1 <= len`; the message is ours and does not overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(message.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
        if !out_written.is_null() {
            // SAFETY: the caller guarantees a non-NULL `out_written` is writable.
            unsafe { *out_written = n };
        }
    });
}

/// The line and column (1-based) of this thread's most recent failure with
/// code `result`, when it has a place in the caller's text: policy errors
/// do. Returns `PORTCULLIS_RESULT_OK` and writes both; otherwise returns
/// `PORTCULLIS_RESULT_INVALID_PARAMETER` and writes nothing.
///
/// # Safety
///
/// `out_line` and `out_column` must be valid for writes.
#[no_mangle]
pub unsafe extern "C" fn portcullis_error_location(
    result: u32,
    out_line: *mut usize,
    out_column: *mut usize,
) -> portcullis_result {
    crate::boundary::call_quiet(|| {
        // SAFETY: the caller guarantees both pointers are writable; both are
        // checked before either is written.
        let (line_out, column_out) =
            unsafe { (crate::boundary::Out::new(out_line)?, crate::boundary::Out::new(out_column)?) };
        let code = code_of(result).ok_or(portcullis_result::InvalidParameter)?;
        let (line, column) = last_with(code)
            .and_then(|e| e.location)
            .ok_or_else(|| Error::new(portcullis_result::InvalidParameter, "that failure has no location"))?;
        line_out.write(line);
        column_out.write(column);
        Ok(())
    })
}

/// The code a number stands for, if any.
fn code_of(n: u32) -> Option<portcullis_result> {
    use portcullis_result as R;
    const ALL: &[portcullis_result] = &[
        R::Ok,
        R::Panic,
        R::NullParameter,
        R::InvalidUtf8,
        R::InsufficientSize,
        R::InvalidParameter,
        R::PolicyFormat,
        R::PolicyInvalid,
        R::PolicyKeys,
        R::IdentityJson,
        R::JwksInvalid,
        R::TokenOversized,
        R::TokenMalformed,
        R::TokenUnsigned,
        R::TokenUnsupportedAlgorithm,
        R::TokenAlgorithmMismatch,
        R::TokenMissingKeyId,
        R::TokenUnknownKeyId,
        R::TokenNoKeys,
        R::TokenCriticalHeader,
        R::TokenBadSignature,
        R::TokenMissingExpiry,
        R::TokenExpired,
        R::TokenNotYetValid,
        R::TokenIssuedInFuture,
        R::TokenWrongIssuer,
        R::TokenWrongAudience,
        R::TokenMissingSubject,
        R::TokenRejected,
        R::DefinitionsJson,
    ];
    ALL.iter().copied().find(|c| *c as u32 == n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_found_by_its_number_and_numbers_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..4000u32 {
            if let Some(code) = code_of(n) {
                assert_eq!(code as u32, n);
                assert!(seen.insert(n));
                assert!(!code.message().is_empty());
            }
        }
        assert_eq!(seen.len(), 30, "a new code must be added to `code_of`");
    }
}
