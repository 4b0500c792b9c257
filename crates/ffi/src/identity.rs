//! `portcullis_identity` and `portcullis_jwks`: who a decision is for.

use std::ffi::c_char;
use std::sync::OnceLock;

use policy_core::{verify_jwt, Actor, Identity, Jwks};
use serde::Deserialize;
use serde_json::Value;

use crate::boundary::{self, portcullis_str, Out};
use crate::engine::portcullis_engine;
use crate::error::{portcullis_result, Error};

/// The caller a decision is made for: a person or workload, its groups, and
/// the agent acting for it, if any (an opaque, immutable handle: share it
/// between threads freely). Made by `portcullis_identity_new` from JSON
/// or by `portcullis_verify_jwt` from a token.
pub struct portcullis_identity {
    pub(crate) identity: Identity,
    /// Built on the first `portcullis_identity_json`.
    json: OnceLock<String>,
}

impl portcullis_identity {
    fn new(identity: Identity) -> Self {
        portcullis_identity { identity, json: OnceLock::new() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityJson {
    subject: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    actor: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActorJson {
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    chain: Vec<String>,
}

fn identity_from_json(text: &str) -> Result<Identity, Error> {
    let bad = |m: String| Error::new(portcullis_result::IdentityJson, format!("identity JSON: {m}"));
    let input: IdentityJson = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    if input.subject.is_empty() {
        return Err(bad("`subject` is empty".into()));
    }
    let actor = match input.actor {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if !name.is_empty() => Some(Actor::new(name)),
        Some(v @ Value::Object(_)) => {
            let a: ActorJson = serde_json::from_value(v).map_err(|e| bad(format!("`actor`: {e}")))?;
            if a.subject.as_deref().unwrap_or("").is_empty() && a.client_id.as_deref().unwrap_or("").is_empty() {
                return Err(bad("`actor` needs a `subject` or a `client_id`".into()));
            }
            Some(Actor { subject: a.subject, client_id: a.client_id, chain: a.chain })
        }
        Some(_) => return Err(bad("`actor` must be a non-empty string or an object".into())),
    };
    Ok(Identity { subject: input.subject, groups: input.groups, actor })
}

/// Makes an identity from JSON:
/// `{"subject": "alice", "groups": ["developers"], "actor": "copilot-7"}`.
/// `groups` and `actor` are optional; `actor` is a name or an object
/// `{"subject": ..., "client_id": ..., "chain": [...]}`. Unknown fields are
/// refused (`PORTCULLIS_RESULT_IDENTITY_JSON`), so a misspelt `group` does
/// not silently give an identity without groups.
///
/// ```c
/// const char *who = "{\"subject\":\"alice\",\"groups\":[\"ai-agents\"],\"actor\":\"copilot-7\"}";
/// portcullis_identity *identity = NULL;
/// portcullis_identity_new(who, strlen(who), &identity);
/// ```
///
/// # Safety
///
/// `json` must be valid for reads of `json_len` bytes; `out_identity` for a write.
#[no_mangle]
pub unsafe extern "C" fn portcullis_identity_new(
    json: *const c_char,
    json_len: usize,
    out_identity: *mut *mut portcullis_identity,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (out, text) = unsafe { (Out::new(out_identity)?, boundary::text(json, json_len, "the identity")?) };
        let identity = identity_from_json(text)?;
        out.write(boundary::into_handle(portcullis_identity::new(identity)));
        Ok(())
    })
}

/// The identity's subject. NULL gives a NULL string.
///
/// # Safety
///
/// `identity` must be NULL or a live identity; the string lives as long as it.
#[no_mangle]
pub unsafe extern "C" fn portcullis_identity_subject(identity: *const portcullis_identity) -> portcullis_str {
    boundary::value(portcullis_str::NONE, || {
        // SAFETY: the caller's contract.
        unsafe { boundary::handle(identity) }
            .map(|i| portcullis_str::of(&i.identity.subject))
            .unwrap_or(portcullis_str::NONE)
    })
}

/// The identity as JSON (`{"subject":..,"groups":[..],"actor":{..}}`): what
/// a token said, for logs and audit. Built on the first call. NULL gives a
/// NULL string.
///
/// # Safety
///
/// `identity` must be NULL or a live identity; the string lives as long as it.
#[no_mangle]
pub unsafe extern "C" fn portcullis_identity_json(identity: *const portcullis_identity) -> portcullis_str {
    boundary::value(portcullis_str::NONE, || {
        // SAFETY: the caller's contract.
        unsafe { boundary::handle(identity) }
            .map(|i| portcullis_str::of(i.json.get_or_init(|| serde_json::to_string(&i.identity).unwrap_or_default())))
            .unwrap_or(portcullis_str::NONE)
    })
}

/// Frees an identity. NULL does nothing.
///
/// # Safety
///
/// `identity` must be NULL or live, and not in use by another thread.
#[no_mangle]
pub unsafe extern "C" fn portcullis_identity_free(identity: *mut portcullis_identity) {
    // SAFETY: forwarded contract.
    unsafe { boundary::free(identity) }
}

/// An OIDC key set (JWKS), parsed once (an opaque, immutable handle).
pub struct portcullis_jwks {
    jwks: Jwks,
}

/// Parses a JWKS document (`{"keys": [...]}`). Keys the engine cannot use
/// are skipped; a document with no usable key still loads, and every token
/// checked against it is refused (`PORTCULLIS_RESULT_TOKEN_NO_KEYS`). A
/// document that is not a key set gives `PORTCULLIS_RESULT_JWKS_INVALID`.
///
/// ```c
/// portcullis_jwks *jwks = NULL;
/// portcullis_result r = portcullis_jwks_new(doc, doc_len, &jwks);
/// ```
///
/// # Safety
///
/// `json` must be valid for reads of `json_len` bytes; `out_jwks` for a write.
#[no_mangle]
pub unsafe extern "C" fn portcullis_jwks_new(
    json: *const u8,
    json_len: usize,
    out_jwks: *mut *mut portcullis_jwks,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (out, bytes) = unsafe { (Out::new(out_jwks)?, boundary::bytes(json, json_len)?) };
        let jwks = Jwks::from_json(bytes)?;
        out.write(boundary::into_handle(portcullis_jwks { jwks }));
        Ok(())
    })
}

/// How many usable keys the key set holds.
///
/// # Safety
///
/// `jwks` must be NULL (gives 0) or live.
#[no_mangle]
pub unsafe extern "C" fn portcullis_jwks_key_count(jwks: *const portcullis_jwks) -> usize {
    boundary::value(0, || {
        // SAFETY: the caller's contract.
        unsafe { boundary::handle(jwks) }.map(|j| j.jwks.len()).unwrap_or(0)
    })
}

/// Frees a key set. NULL does nothing.
///
/// # Safety
///
/// `jwks` must be NULL or live, and not in use by another thread.
#[no_mangle]
pub unsafe extern "C" fn portcullis_jwks_free(jwks: *mut portcullis_jwks) {
    // SAFETY: forwarded contract.
    unsafe { boundary::free(jwks) }
}

/// Verifies an OIDC token (a JWT) against `jwks` and maps its claims with
/// the engine's policy (`[identity]`: claim names, issuer, audience,
/// leeway). `now_unix_seconds` is the current time: the library reads no
/// clock. On success writes a new identity to `*out_identity`; a refused
/// token gives a `PORTCULLIS_RESULT_TOKEN_*` code (or `_JWKS_INVALID`), and
/// `portcullis_error` says which check refused
/// it. No message ever holds the token.
///
/// ```c
/// portcullis_identity *who = NULL;
/// portcullis_result r = portcullis_verify_jwt(engine, jwks, token, strlen(token), (uint64_t)time(NULL), &who);
/// ```
///
/// # Safety
///
/// `engine` and `jwks` must be live; `token` valid for reads of `token_len`
/// bytes; `out_identity` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn portcullis_verify_jwt(
    engine: *const portcullis_engine,
    jwks: *const portcullis_jwks,
    token: *const c_char,
    token_len: usize,
    now_unix_seconds: u64,
    out_identity: *mut *mut portcullis_identity,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (out, engine, jwks, token) = unsafe {
            (
                Out::new(out_identity)?,
                boundary::handle(engine)?,
                boundary::handle(jwks)?,
                boundary::text(token, token_len, "the token")?,
            )
        };
        let rules = engine.engine.policy().identity.rules();
        let identity = verify_jwt(token, &jwks.jwks, &rules, now_unix_seconds)?;
        out.write(boundary::into_handle(portcullis_identity::new(identity)));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_json_is_read_strictly() {
        let id = identity_from_json(r#"{"subject":"alice","groups":["g"],"actor":"bot"}"#).ok();
        assert_eq!(id, Some(Identity::new("alice").with_groups(["g"]).with_actor(Actor::new("bot"))));
        let id = identity_from_json(r#"{"subject":"alice","actor":{"client_id":"c"}}"#).ok();
        assert_eq!(id.and_then(|i| i.actor).and_then(|a| a.client_id).as_deref(), Some("c"));
        for bad in [
            r#"{"subject":"alice","group":["g"]}"#,
            r#"{"subject":""}"#,
            r#"{"groups":["g"]}"#,
            r#"{"subject":"a","actor":{}}"#,
            r#"{"subject":"a","actor":""}"#,
            r#"{"subject":"a","actor":7}"#,
            r#"{"subject":"a","actor":{"name":"x"}}"#,
            "[]",
        ] {
            let e = identity_from_json(bad).err().map(|e| e.code);
            assert_eq!(e, Some(portcullis_result::IdentityJson), "{bad}");
        }
    }
}
