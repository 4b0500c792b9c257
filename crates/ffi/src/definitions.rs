//! `portcullis_definitions`: the views and SQL functions of a database, for
//! judging statements by what they read.

use std::ffi::c_char;
use std::sync::Arc;

use policy_core::{Definitions, Function, FunctionBody, RowPolicy, Session, View, ViewKind};
use serde::Deserialize;

use crate::boundary::{self, Out};
use crate::error::{portcullis_result, Error};
use crate::session::portcullis_session;

/// The views and functions of one database at one moment, as the caller
/// read them from its catalog (an opaque handle). Read them once per
/// database and give the same handle to every session there with
/// `portcullis_session_set_definitions`; read them again (a new handle)
/// after DDL. Sessions keep what they were given: the handle may be freed while
/// they use it.
pub struct portcullis_definitions {
    pub(crate) definitions: Arc<Definitions>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionJson {
    schema: String,
    name: String,
    language: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    sql_standard: bool,
    #[serde(default)]
    search_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleJson {
    schema: String,
    name: String,
    definition: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RowPolicyJson {
    schema: String,
    name: String,
    #[serde(default)]
    using: Option<String>,
    #[serde(default)]
    check: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerJson {
    schema: String,
    name: String,
    function_schema: String,
    function: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionsJson {
    #[serde(default)]
    views: Vec<ViewJson>,
    #[serde(default)]
    functions: Vec<FunctionJson>,
    #[serde(default)]
    rules: Vec<RuleJson>,
    #[serde(default)]
    row_policies: Vec<RowPolicyJson>,
    #[serde(default)]
    triggers: Vec<TriggerJson>,
    #[serde(default)]
    catalog_relations: Vec<String>,
}

/// The definitions from JSON: `{"views": [...], "functions": [...],
/// "rules": [...], "row_policies": [...], "triggers": [...],
/// "catalog_relations": [...]}`, each optional.
///
/// A view is `{"schema": "public", "name": "v", "kind": "view", "columns":
/// ["id", "tel"], "definition": " SELECT ..."}`, one per view and
/// materialized view (`"kind": "materialized"`; `"view"` when omitted)
/// outside `pg_catalog` and `information_schema`: `columns` are its column
/// names in order, `definition` is `pg_get_viewdef(oid)` read on a
/// connection whose `search_path` is empty (every name outside
/// `pg_catalog` qualified).
///
/// A function is `{"schema": "public", "name": "f", "language": "sql",
/// "body": "SELECT ...", "sql_standard": false, "search_path": "app,
/// public"}`, one per overload: `body` is `prosrc`, or for a SQL-standard
/// body (`"sql_standard": true`) the whole `pg_get_functiondef(oid)` read
/// on a connection with an empty `search_path`; `search_path` is what its
/// `SET search_path` clause gives it, if any. Functions in other
/// languages are listed too (without a body): a call to them is opaque.
///
/// A rule is `{"schema": "public", "name": "orders", "definition": "CREATE
/// RULE ..."}`, one per rewrite rule other than a view's `_RETURN`:
/// `name` is the relation it is on, `definition` is `pg_get_ruledef(oid)`
/// read on a connection whose `search_path` is empty. A row policy is
/// `{"schema": "public", "name": "docs", "using": "...", "check": "..."}`,
/// one per policy of a table whose row security is on: `using` and `check`
/// are `pg_get_expr(polqual, polrelid)` and `pg_get_expr(polwithcheck,
/// polrelid)` read the same way (each optional). A trigger is `{"schema":
/// "public", "name": "orders", "function_schema": "audit", "function":
/// "log_change"}`, one per trigger the server fires (`NOT tgisinternal`,
/// not disabled): `name` is its table. `catalog_relations` are
/// the names of the relations in `pg_catalog` whose OID is 16384 or more
/// (not the server's own: a superuser moved them there).
///
/// Unknown fields are refused (`PORTCULLIS_RESULT_DEFINITIONS_JSON`).
///
/// ```c
/// const char *json = "{\"views\":[{\"schema\":\"public\",\"name\":\"v\",\"columns\":[\"id\"],"
///                    "\"definition\":\" SELECT s.id FROM private.secrets s;\"}]}";
/// portcullis_definitions *definitions = NULL;
/// portcullis_definitions_new(json, strlen(json), &definitions);
/// portcullis_session_set_definitions(session, definitions);
/// portcullis_definitions_free(definitions);
/// ```
///
/// # Safety
///
/// `json` must be valid for reads of `json_len` bytes; `out_definitions` for a write.
#[no_mangle]
pub unsafe extern "C" fn portcullis_definitions_new(
    json: *const c_char,
    json_len: usize,
    out_definitions: *mut *mut portcullis_definitions,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (out, text) = unsafe { (Out::new(out_definitions)?, boundary::text(json, json_len, "the views")?) };
        let bad = |e: String| Error::new(portcullis_result::DefinitionsJson, format!("definitions JSON: {e}"));
        let input: DefinitionsJson = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut definitions = Definitions::new();
        for v in input.views {
            definitions.insert(&v.schema, &v.name, View::new(v.kind, v.columns, v.definition));
        }
        for f in input.functions {
            let body = match (f.language.as_str(), f.body) {
                ("sql", Some(text)) if f.sql_standard => FunctionBody::Standard(text),
                ("sql", Some(text)) => FunctionBody::Sql(text),
                ("sql", None) => return Err(bad(format!("function {}.{} is in sql without a body", f.schema, f.name))),
                _ => FunctionBody::Other { language: f.language },
            };
            let path = match f.search_path {
                Some(p) => Some(Session::search_path_from_setting(&p).ok_or_else(|| {
                    bad(format!("the search_path of function {}.{} does not parse", f.schema, f.name))
                })?),
                None => None,
            };
            definitions.insert_function(&f.schema, &f.name, Function::new(body, path));
        }
        for r in input.rules {
            definitions.insert_rule(&r.schema, &r.name, r.definition);
        }
        for p in input.row_policies {
            definitions.insert_row_policy(&p.schema, &p.name, RowPolicy::new(p.using, p.check));
        }
        for t in &input.triggers {
            definitions.insert_trigger(&t.schema, &t.name, &t.function_schema, &t.function);
        }
        for name in &input.catalog_relations {
            definitions.insert_catalog_relation(name);
        }
        out.write(boundary::into_handle(portcullis_definitions { definitions: Arc::new(definitions) }));
        Ok(())
    })
}

/// Definitions that could not be read (`reason` says why): a session given them
/// refuses, as opaque, every statement naming a relation outside the
/// system schemas, since any of them might be a view.
///
/// # Safety
///
/// `reason` must be valid for reads of `reason_len` bytes; `out_definitions` for a write.
#[no_mangle]
pub unsafe extern "C" fn portcullis_definitions_unavailable(
    reason: *const c_char,
    reason_len: usize,
    out_definitions: *mut *mut portcullis_definitions,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (out, reason) = unsafe { (Out::new(out_definitions)?, boundary::text(reason, reason_len, "the reason")?) };
        out.write(boundary::into_handle(portcullis_definitions {
            definitions: Arc::new(Definitions::unavailable(reason)),
        }));
        Ok(())
    })
}

/// How many views they hold (functions aside); 0 for NULL.
///
/// # Safety
///
/// `definitions` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn portcullis_definitions_count(definitions: *const portcullis_definitions) -> usize {
    boundary::value(0, || {
        // SAFETY: the caller's contract.
        unsafe { boundary::handle(definitions) }.map_or(0, |d| d.definitions.len())
    })
}

/// Gives the session the definitions of its database: statements naming
/// views or calling SQL functions are then judged by what they read (with
/// the policy's `settings.views = "expand"`, the default). NULL takes them
/// away (views are judged by name). The session keeps its own reference.
///
/// # Safety
///
/// `session` must be live and not in use by another thread; `definitions`
/// NULL or live.
#[no_mangle]
pub unsafe extern "C" fn portcullis_session_set_definitions(
    session: *mut portcullis_session,
    definitions: *const portcullis_definitions,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let session = unsafe { boundary::handle_mut(session) }?;
        session.session.definitions = if definitions.is_null() {
            None
        } else {
            // SAFETY: the caller's contract.
            Some(Arc::clone(&unsafe { boundary::handle(definitions) }?.definitions))
        };
        Ok(())
    })
}

/// Frees definitions. NULL does nothing. Sessions given them keep them.
///
/// # Safety
///
/// `definitions` must be NULL or live, and not in use by another thread.
#[no_mangle]
pub unsafe extern "C" fn portcullis_definitions_free(definitions: *mut portcullis_definitions) {
    // SAFETY: forwarded contract.
    unsafe { boundary::free(definitions) }
}
