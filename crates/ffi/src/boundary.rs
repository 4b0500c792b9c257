//! The edge between C and Rust: panics stop here, pointers are checked
//! here, out-pointers are written here.

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;

use crate::error::{self, portcullis_result, Error};

/// Runs one export's body: a panic becomes `PORTCULLIS_RESULT_PANIC`, an
/// error is recorded for `portcullis_error`.
pub(crate) fn call(f: impl FnOnce() -> Result<(), Error>) -> portcullis_result {
    match guarded(f) {
        Some(Ok(())) => portcullis_result::Ok,
        Some(Err(e)) => error::record(e),
        None => error::record(Error::from(portcullis_result::Panic)),
    }
}

/// As [`call`], for the functions that describe a failure: their own
/// failures are not recorded, so asking about the last failure never
/// replaces it.
pub(crate) fn call_quiet(f: impl FnOnce() -> Result<(), Error>) -> portcullis_result {
    match guarded(f) {
        Some(Ok(())) => portcullis_result::Ok,
        Some(Err(e)) => e.code,
        None => portcullis_result::Panic,
    }
}

/// Runs an accessor that returns a value: a panic gives `fallback`.
pub(crate) fn value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    guarded(f).unwrap_or(fallback)
}

/// Runs `f`; `None` when it panicked. The panic's payload is dropped
/// inside a boundary too (a payload whose destructor panics is leaked).
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(payload) => {
            if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                std::mem::forget(again);
            }
            None
        }
    }
}

/// An out-pointer, checked for NULL before any work is done so that it can
/// be written, once, after all of it succeeded.
pub(crate) struct Out<T>(NonNull<T>);

impl<T> Out<T> {
    /// # Safety
    ///
    /// A non-NULL `p` must be valid for one write of `T`.
    pub(crate) unsafe fn new(p: *mut T) -> Result<Self, Error> {
        NonNull::new(p).map(Out).ok_or_else(|| Error::from(portcullis_result::NullParameter))
    }

    pub(crate) fn write(self, value: T) {
        // SAFETY: `new`'s contract: the pointer is valid for a write. It is
        // written with `write`, so whatever it held is not dropped.
        unsafe { self.0.as_ptr().write(value) }
    }
}

/// The bytes at `ptr`. NULL is accepted only when `len` is 0.
///
/// # Safety
///
/// A non-NULL `ptr` must be valid for reads of `len` bytes, unchanged while
/// the returned slice lives.
pub(crate) unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(portcullis_result::NullParameter.into());
    }
    if len > isize::MAX as usize {
        return Err(Error::new(portcullis_result::InvalidParameter, format!("length {len} is above PTRDIFF_MAX")));
    }
    // SAFETY: non-NULL, at most isize::MAX bytes, readable per the contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The `n` values of `T` at `ptr`. NULL is accepted only when `n` is 0; a
/// count whose bytes exceed `isize::MAX` is refused.
///
/// # Safety
///
/// A non-NULL `ptr` must be valid for reads of `n` values of `T`, unchanged
/// while the returned slice lives.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, n: usize, what: &str) -> Result<&'a [T], Error> {
    check_array::<T>(ptr.is_null(), n, what)?;
    if n == 0 {
        return Ok(&[]);
    }
    // SAFETY: non-NULL, at most isize::MAX bytes, readable per the contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

/// As [`slice`], for a change.
///
/// # Safety
///
/// As [`slice`], and valid for writes, with no other reference in use.
pub(crate) unsafe fn slice_mut<'a, T>(ptr: *mut T, n: usize, what: &str) -> Result<&'a mut [T], Error> {
    check_array::<T>(ptr.is_null(), n, what)?;
    if n == 0 {
        return Ok(&mut []);
    }
    // SAFETY: as in `slice`, and writable per the contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, n) })
}

fn check_array<T>(null: bool, n: usize, what: &str) -> Result<(), Error> {
    if n.checked_mul(std::mem::size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
        return Err(Error::new(portcullis_result::InvalidParameter, format!("{n} {what} is more than memory holds")));
    }
    if null && n > 0 {
        return Err(Error::new(portcullis_result::NullParameter, format!("{what} is NULL with a count of {n}")));
    }
    Ok(())
}

/// The UTF-8 text at `ptr` (not NUL-terminated: `len` bytes). `what` names
/// the argument in the error.
///
/// # Safety
///
/// As [`bytes`].
pub(crate) unsafe fn text<'a>(ptr: *const c_char, len: usize, what: &str) -> Result<&'a str, Error> {
    // SAFETY: forwarded contract.
    let bytes = unsafe { bytes(ptr.cast::<u8>(), len) }?;
    std::str::from_utf8(bytes).map_err(|e| {
        Error::new(portcullis_result::InvalidUtf8, format!("{what} is not valid UTF-8 (at byte {})", e.valid_up_to()))
    })
}

/// The object behind a handle.
///
/// # Safety
///
/// A non-NULL `ptr` must come from this library's `_new` for `T`, not yet freed.
pub(crate) unsafe fn handle<'a, T>(ptr: *const T) -> Result<&'a T, Error> {
    // SAFETY: forwarded contract: a live Box<T>.
    unsafe { ptr.as_ref() }.ok_or_else(|| portcullis_result::NullParameter.into())
}

/// The object behind a handle, for a change.
///
/// # Safety
///
/// As [`handle`], and no other reference to it may be in use.
pub(crate) unsafe fn handle_mut<'a, T>(ptr: *mut T) -> Result<&'a mut T, Error> {
    // SAFETY: forwarded contract.
    unsafe { ptr.as_mut() }.ok_or_else(|| portcullis_result::NullParameter.into())
}

/// Gives `value` to the caller as a handle.
pub(crate) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Takes a handle back and drops it; NULL does nothing.
///
/// # Safety
///
/// A non-NULL `ptr` must come from [`into_handle`] for `T`, not yet freed,
/// and not in use by any other thread.
pub(crate) unsafe fn free<T>(ptr: *mut T) {
    if !ptr.is_null() {
        // A panic in a destructor must not unwind into C.
        guarded(|| {
            // SAFETY: the contract: a live Box<T> given up by the caller.
            drop(unsafe { Box::from_raw(ptr) })
        });
    }
}

/// A borrowed string handed to C: `len` bytes at `data`, not
/// NUL-terminated. `data` is NULL (and `len` 0) for "none".
///
/// The bytes live as long as the handle they were read from.
///
/// ```c
/// portcullis_str rule = portcullis_decision_rule(decision);
/// if (rule.data) printf("rule: %.*s\n", (int)rule.len, rule.data);
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct portcullis_str {
    /// The first byte, or NULL.
    pub data: *const c_char,
    /// How many bytes.
    pub len: usize,
}

impl portcullis_str {
    pub(crate) const NONE: portcullis_str = portcullis_str { data: std::ptr::null(), len: 0 };

    pub(crate) fn of(s: &str) -> portcullis_str {
        portcullis_str { data: s.as_ptr().cast::<c_char>(), len: s.len() }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic, reason = "test code")]
    use super::*;

    #[test]
    fn a_panic_becomes_a_result_code_and_a_message() {
        let r = call(|| panic!("boom"));
        assert_eq!(r, portcullis_result::Panic);
        let mut buf = [0 as c_char; 128];
        let mut n = 0usize;
        // SAFETY: the buffer and the count are local and writable.
        unsafe { crate::portcullis_error(r as u32, buf.as_mut_ptr(), buf.len(), &mut n) };
        let text: Vec<u8> = buf.iter().take(n).map(|&c| c as u8).collect();
        assert!(String::from_utf8_lossy(&text).contains("please report it"));
        assert_eq!(value(7, || panic!("boom")), 7);
    }

    #[test]
    fn null_and_bad_text_are_result_codes() {
        // SAFETY: NULL with a length is what is being tested; nothing is read.
        let e = unsafe { bytes(std::ptr::null(), 3) }.err().map(|e| e.code);
        assert_eq!(e, Some(portcullis_result::NullParameter));
        // SAFETY: NULL with length 0 reads nothing.
        assert_eq!(unsafe { bytes(std::ptr::null(), 0) }.ok(), Some(&[][..]));
        let bad = [b'a', 0xff, b'b'];
        // SAFETY: `bad` holds three readable bytes.
        let e = unsafe { text(bad.as_ptr().cast(), bad.len(), "sql") }.err();
        assert_eq!(
            e.map(|e| (e.code, e.message)),
            Some((portcullis_result::InvalidUtf8, "sql is not valid UTF-8 (at byte 1)".into()))
        );
    }
}
