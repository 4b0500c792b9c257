//! `portcullis_views`: the views of a database, for judging statements by
//! what the views read.

use std::ffi::c_char;
use std::sync::Arc;

use policy_core::{View, ViewKind, Views};
use serde::Deserialize;

use crate::boundary::{self, Out};
use crate::error::{portcullis_result, Error};
use crate::session::portcullis_session;

/// The views of one database at one moment, as the caller read them from
/// its catalog (an opaque handle). Read them once per database and give
/// the same handle to every session there with
/// `portcullis_session_set_views`; read them again (a new handle) after
/// DDL. Sessions keep what they were given: the handle may be freed while
/// they use it.
pub struct portcullis_views {
    pub(crate) views: Arc<Views>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewJson {
    schema: String,
    name: String,
    #[serde(default = "default_kind")]
    kind: ViewKind,
    columns: Vec<String>,
    definition: String,
}

fn default_kind() -> ViewKind {
    ViewKind::View
}

/// The views from JSON: a list of objects `{"schema": "public", "name":
/// "v", "kind": "view", "columns": ["id", "tel"], "definition": " SELECT
/// ..."}`, one per view and materialized view (`"kind": "materialized"`;
/// `"view"` when omitted) outside `pg_catalog` and `information_schema`.
/// `columns` are the view's column names in order; `definition` is
/// `pg_get_viewdef(oid)` read on a connection whose `search_path` is empty
/// (so that every name outside `pg_catalog` is qualified). Unknown fields
/// are refused (`PORTCULLIS_RESULT_VIEWS_JSON`).
///
/// ```c
/// const char *json = "[{\"schema\":\"public\",\"name\":\"v\",\"columns\":[\"id\"],"
///                    "\"definition\":\" SELECT s.id FROM private.secrets s;\"}]";
/// portcullis_views *views = NULL;
/// portcullis_views_new(json, strlen(json), &views);
/// portcullis_session_set_views(session, views);
/// portcullis_views_free(views);
/// ```
///
/// # Safety
///
/// `json` must be valid for reads of `json_len` bytes; `out_views` for a write.
#[no_mangle]
pub unsafe extern "C" fn portcullis_views_new(
    json: *const c_char,
    json_len: usize,
    out_views: *mut *mut portcullis_views,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (out, text) = unsafe { (Out::new(out_views)?, boundary::text(json, json_len, "the views")?) };
        let list: Vec<ViewJson> = serde_json::from_str(text)
            .map_err(|e| Error::new(portcullis_result::ViewsJson, format!("views JSON: {e}")))?;
        let mut views = Views::new();
        for v in list {
            views.insert(&v.schema, &v.name, View::new(v.kind, v.columns, v.definition));
        }
        out.write(boundary::into_handle(portcullis_views { views: Arc::new(views) }));
        Ok(())
    })
}

/// Views that could not be read (`reason` says why): a session given them
/// refuses, as opaque, every statement naming a relation outside the
/// system schemas, since any of them might be a view.
///
/// # Safety
///
/// `reason` must be valid for reads of `reason_len` bytes; `out_views` for a write.
#[no_mangle]
pub unsafe extern "C" fn portcullis_views_unavailable(
    reason: *const c_char,
    reason_len: usize,
    out_views: *mut *mut portcullis_views,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (out, reason) = unsafe { (Out::new(out_views)?, boundary::text(reason, reason_len, "the reason")?) };
        out.write(boundary::into_handle(portcullis_views { views: Arc::new(Views::unavailable(reason)) }));
        Ok(())
    })
}

/// How many views it holds.
///
/// # Safety
///
/// `views` must be NULL (0) or live.
#[no_mangle]
pub unsafe extern "C" fn portcullis_views_count(views: *const portcullis_views) -> usize {
    boundary::value(0, || {
        // SAFETY: the caller's contract.
        unsafe { boundary::handle(views) }.map_or(0, |v| v.views.len())
    })
}

/// Gives the session the views of its database: statements naming views
/// are then judged by what they read (with the policy's `settings.views =
/// "expand"`, the default). NULL takes them away (views are judged by
/// name). The session keeps its own reference.
///
/// # Safety
///
/// `session` must be live and not in use by another thread; `views` NULL
/// or live.
#[no_mangle]
pub unsafe extern "C" fn portcullis_session_set_views(
    session: *mut portcullis_session,
    views: *const portcullis_views,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let session = unsafe { boundary::handle_mut(session) }?;
        session.session.views = if views.is_null() {
            None
        } else {
            // SAFETY: the caller's contract.
            Some(Arc::clone(&unsafe { boundary::handle(views) }?.views))
        };
        Ok(())
    })
}

/// Frees views. NULL does nothing. Sessions given them keep them.
///
/// # Safety
///
/// `views` must be NULL or live, and not in use by another thread.
#[no_mangle]
pub unsafe extern "C" fn portcullis_views_free(views: *mut portcullis_views) {
    // SAFETY: forwarded contract.
    unsafe { boundary::free(views) }
}
