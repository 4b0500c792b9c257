//! `portcullis_masker`: masks the rows of one statement's result.

use std::borrow::Cow;
use std::ffi::c_char;

use policy_core::{ColumnInfo, RowMasker};

use crate::boundary::{self, Out};
use crate::decision::portcullis_decision;
use crate::engine::portcullis_engine;
use crate::error::{portcullis_result, Error};
use crate::identity::portcullis_identity;

/// One result column, as the server described it (RowDescription).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct portcullis_column {
    /// The column's name in the result (UTF-8, `name_len` bytes).
    pub name: *const c_char,
    /// Length of `name`.
    pub name_len: usize,
    /// `schema.table.column` when the server reports the column as a plain
    /// reference to a table column (RowDescription's table OID and
    /// attribute number, looked up in the catalog); NULL when not.
    pub source: *const c_char,
    /// Length of `source`.
    pub source_len: usize,
    /// The column's type OID (0 when unknown).
    pub type_oid: u32,
    /// Whether its values arrive in binary format: nonzero for binary, 0
    /// for text. (A byte rather than a C `bool`, so that no byte a caller
    /// leaves in it is undefined.)
    pub binary: u8,
}

/// One value of a row: `len` bytes at `data`, or SQL NULL.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct portcullis_cell {
    /// The value's bytes (ignored when `is_null`).
    pub data: *const u8,
    /// How many.
    pub len: usize,
    /// Nonzero when the value is SQL NULL. The library writes 0 or 1.
    pub is_null: u8,
}

/// The masking plan of one statement's result for one identity (an
/// opaque, immutable handle: share it between threads freely). Build it
/// once per result with `portcullis_masker_new`, then call
/// `portcullis_mask_row` on every row.
pub struct portcullis_masker {
    masker: RowMasker,
    columns: usize,
}

/// Plans the masking of the result of statement `statement` (0-based) of
/// `decision`, for `identity`, from the `n_columns` columns the server
/// described. Masks follow each column's lineage through the statement:
/// `SELECT upper(email) AS e` is masked as `email` is.
///
/// ```c
/// portcullis_column cols[2] = {
///     { "id", 2, "public.users.id", 15, 23, 0 },
///     { "email", 5, "public.users.email", 18, 25, 0 },
/// };
/// portcullis_masker *m = NULL;
/// portcullis_masker_new(engine, identity, decision, 0, cols, 2, &m);
/// ```
///
/// # Safety
///
/// The handles must be live; `columns` valid for reads of `n_columns`
/// entries, each with its strings valid for reads of their lengths;
/// `out_masker` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn portcullis_masker_new(
    engine: *const portcullis_engine,
    identity: *const portcullis_identity,
    decision: *const portcullis_decision,
    statement: usize,
    columns: *const portcullis_column,
    n_columns: usize,
    out_masker: *mut *mut portcullis_masker,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (out, engine, identity, decision) = unsafe {
            (Out::new(out_masker)?, boundary::handle(engine)?, boundary::handle(identity)?, boundary::handle(decision)?)
        };
        // SAFETY: the caller's contract: `n_columns` readable entries.
        let columns = unsafe { boundary::slice(columns, n_columns, "columns") }?;
        let facts = decision.decision.statements.get(statement).map(|s| &s.facts).ok_or_else(|| {
            Error::new(
                portcullis_result::InvalidParameter,
                format!("statement {statement} is past the decision's {}", decision.decision.statements.len()),
            )
        })?;
        let mut infos = Vec::with_capacity(columns.len());
        for (i, c) in columns.iter().enumerate() {
            let in_column = |e: Error| Error::new(e.code, format!("column {i}: {}", e.message));
            // SAFETY: the caller's contract for each column's strings.
            let name = unsafe { boundary::text(c.name, c.name_len, "its name") }.map_err(in_column)?;
            let source = if c.source.is_null() {
                None
            } else {
                // SAFETY: as above.
                Some(unsafe { boundary::text(c.source, c.source_len, "its source") }.map_err(in_column)?)
            };
            infos.push(ColumnInfo::new(name, source, c.type_oid, c.binary != 0));
        }
        let masker = engine.engine.masker(&identity.identity, facts, &infos);
        out.write(boundary::into_handle(portcullis_masker { masker, columns: infos.len() }));
        Ok(())
    })
}

/// Whether rows pass untouched (no column masked, no detector active): the
/// caller may skip `portcullis_mask_row`. NULL gives false.
///
/// # Safety
///
/// `masker` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn portcullis_masker_is_noop(masker: *const portcullis_masker) -> bool {
    boundary::value(false, || {
        // SAFETY: the caller's contract.
        unsafe { boundary::handle(masker) }.is_ok_and(|m| m.masker.is_noop())
    })
}

/// Whether column `column` must be described to the client as `text`
/// (type OID 25, text format): its values are masked into text that no
/// longer fits the column's own type.
///
/// # Safety
///
/// `masker` must be NULL (gives false) or live.
#[no_mangle]
pub unsafe extern "C" fn portcullis_masker_retyped(masker: *const portcullis_masker, column: usize) -> bool {
    boundary::value(false, || {
        // SAFETY: the caller's contract.
        unsafe { boundary::handle(masker) }.is_ok_and(|m| m.masker.retyped_columns().contains(&column))
    })
}

/// Masks one row. `cells` holds the row's `n_cells` values (as many as the
/// masker's columns). Values that change are written one after another
/// into `buf` and their cells are pointed at them (a value masked to NULL
/// gets `is_null` set); other cells are left alone, and the bytes they
/// point to are never written. On success `*out_used` is how many bytes of
/// `buf` were used and `*out_changed` how many values changed. A no-op
/// masker (`portcullis_masker_is_noop`) does not read the row at all.
///
/// When the masked values do not fit in `buf_len` bytes, returns
/// `PORTCULLIS_RESULT_INSUFFICIENT_SIZE` and changes nothing: call again
/// with a larger buffer (masking is deterministic). `buf` may be NULL (with
/// `buf_len` 0) when no masked value needs a byte, as for a mask to NULL. A
/// value that overlaps `buf` gives `PORTCULLIS_RESULT_INVALID_PARAMETER`:
/// mask each row into a buffer of its own, not into the one an earlier
/// call's values still point to.
///
/// ```c
/// portcullis_cell row[2] = { { (const uint8_t *)"7", 1, 0 }, { (const uint8_t *)"ann@example.com", 15, 0 } };
/// uint8_t buf[256];
/// size_t used, changed;
/// portcullis_mask_row(m, row, 2, buf, sizeof buf, &used, &changed);
/// // row[1] now points into buf: "****@example.com" (with an `email` mask)
/// ```
///
/// # Safety
///
/// `masker` must be live; `cells` valid for reads and writes of `n_cells`
/// entries, each cell that is not NULL valid for reads of its length; `buf`
/// valid for writes of `buf_len` bytes; `out_used` and `out_changed` valid
/// for writes.
#[no_mangle]
pub unsafe extern "C" fn portcullis_mask_row(
    masker: *const portcullis_masker,
    cells: *mut portcullis_cell,
    n_cells: usize,
    buf: *mut u8,
    buf_len: usize,
    out_used: *mut usize,
    out_changed: *mut usize,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (used_out, changed_out, masker) =
            unsafe { (Out::new(out_used)?, Out::new(out_changed)?, boundary::handle(masker)?) };
        if n_cells != masker.columns {
            return Err(Error::new(
                portcullis_result::InvalidParameter,
                format!("the row has {n_cells} values and the result {} columns", masker.columns),
            ));
        }
        // SAFETY: the caller's contract: `n_cells` entries, readable and writable.
        let cells = unsafe { boundary::slice_mut(cells, n_cells, "cells") }?;
        if masker.masker.is_noop() {
            // Nothing is masked and no detector reads: the row is not read.
            used_out.write(0);
            changed_out.write(0);
            return Ok(());
        }
        let mut row: Vec<Option<Cow<'_, [u8]>>> = Vec::with_capacity(cells.len());
        let buf_range = (buf as usize)..(buf as usize).saturating_add(buf_len);
        for (i, c) in cells.iter().enumerate() {
            if c.is_null != 0 {
                row.push(None);
                continue;
            }
            // SAFETY: the caller's contract for each value.
            let value = unsafe { boundary::bytes(c.data, c.len) }?;
            let at = value.as_ptr() as usize;
            if !buf.is_null() && !value.is_empty() && at < buf_range.end && buf_range.start < at + value.len() {
                return Err(Error::new(
                    portcullis_result::InvalidParameter,
                    format!("value {i} overlaps the output buffer (mask into a buffer of its own)"),
                ));
            }
            row.push(Some(Cow::Borrowed(value)));
        }
        masker.masker.mask_row(&mut row);
        // A value changed when it is new bytes, or NULL where it was not.
        let needed: usize = row.iter().map(|v| if let Some(Cow::Owned(v)) = v { v.len() } else { 0 }).sum();
        if needed > 0 && buf.is_null() {
            return Err(Error::new(
                portcullis_result::NullParameter,
                format!("the masked values need {needed} bytes and the buffer is NULL"),
            ));
        }
        if needed > buf_len {
            return Err(Error::new(
                portcullis_result::InsufficientSize,
                format!("the masked values need {needed} bytes and the buffer holds {buf_len}"),
            ));
        }
        // Nothing can fail from here on: the cells are written in place.
        let (mut used, mut count) = (0usize, 0usize);
        for (cell, value) in cells.iter_mut().zip(&row) {
            match value {
                Some(Cow::Owned(v)) if v.is_empty() => {
                    *cell = portcullis_cell { data: b"".as_ptr(), len: 0, is_null: 0 };
                }
                Some(Cow::Owned(v)) => {
                    // SAFETY: `used + v.len() <= needed <= buf_len`, `buf` is
                    // non-NULL (needed > 0) and writable for `buf_len` bytes,
                    // and does not overlap `v`, which is ours.
                    let dst = unsafe { buf.add(used) };
                    // SAFETY: as above.
                    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), dst, v.len()) };
                    used += v.len();
                    *cell = portcullis_cell { data: dst, len: v.len(), is_null: 0 };
                }
                None if cell.is_null == 0 => *cell = portcullis_cell { data: std::ptr::null(), len: 0, is_null: 1 },
                _ => continue,
            }
            count += 1;
        }
        used_out.write(used);
        changed_out.write(count);
        Ok(())
    })
}

/// Frees a masker. NULL does nothing.
///
/// # Safety
///
/// `masker` must be NULL or live, and not in use by another thread.
#[no_mangle]
pub unsafe extern "C" fn portcullis_masker_free(masker: *mut portcullis_masker) {
    // SAFETY: forwarded contract.
    unsafe { boundary::free(masker) }
}
