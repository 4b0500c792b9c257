//! The admin HTTP server (`[admin] listen`): the approvals API, and the
//! web inbox at `/` (a page and a script of its own, no build step, that
//! calls the same API with the approver's token). Over TLS with the
//! gateway's certificate when `[tls]` is set ([`TlsListener`]).
//!
//! Every request carries the caller's own token as `Authorization: Bearer
//! ...`, verified with the gateway's key set, as a client's is at login.
//! Errors are JSON, `{"error": {"code": "...", "message": "..."}}`, with
//! the HTTP status that fits (401 without a valid token, 403 for an
//! approval the caller may not give, 404 for an unknown id, 409 for a
//! request decided already, 400 for a malformed body).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/approvals?state=pending\|decided` | the requests the caller may see |
//! | `GET /api/v1/approvals/{id}` | one request |
//! | `POST /api/v1/approvals/{id}/approve` | `{"reason": "...", "grant_for": "30m"}`, both optional |
//! | `POST /api/v1/approvals/{id}/deny` | `{"reason": "..."}`, the reason required |
//! | `POST /api/v1/approvals/{id}/justify` | `{"reason": "..."}`: the requester gives their reason |
//! | `GET /api/v1/grants` | the live grants the caller may see |
//! | `DELETE /api/v1/grants/{id}` | revokes a grant |
//! | `GET /api/v1/events` | server-sent events: each change the caller may see, as it happens |
//! | `GET /api/v1/sessions` | the live sessions the caller may see |
//! | `POST /api/v1/sessions/{id}/cancel` | cancels what a session runs or holds |
//! | `DELETE /api/v1/sessions/{id}` | ends a session |
//! | `POST /api/v1/reload` | reloads the policy, the key set and the TLS certificate (operators) |
//! | `GET /api/v1/openapi.json` | the OpenAPI document of all this (no token needed) |
//! | `GET /metrics` | Prometheus metrics ([`crate::metrics`]; no token needed) |
//! | `GET /healthz` | 200 while the process serves (no token needed) |
//! | `GET /readyz` | 200 when the gateway can serve, 503 and what fails otherwise (no token needed) |
//!
//! A caller sees the requests and grants whose approver groups they are
//! in, and those their own agents asked for; the sessions that are theirs
//! (their own and their agents'), or every session when they are in one
//! of the `[admin] operators` groups. Sessions and reloads take a
//! person's token: an agent's is refused.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

mod listener;

use listener::Limited;
pub use listener::{Limits, TlsListener, HEADER_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS};

use crate::approvals::ledger::{Approver, Grant, LedgerError, Progress, Request};
use crate::approvals::store::ApprovalStore;
use crate::server::Gateway;
use crate::session::registry::Control;

/// What the handlers share.
#[derive(Debug, Clone)]
struct Admin {
    gateway: Arc<Gateway>,
    store: Arc<ApprovalStore>,
}

/// An error answer.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response()
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> ApiError {
        let (status, code) = match &e {
            LedgerError::NoRequest(_) | LedgerError::NoGrant(_) => (StatusCode::NOT_FOUND, "not_found"),
            LedgerError::Duplicate(_) => (StatusCode::CONFLICT, "duplicate"),
            LedgerError::Decided { .. } => (StatusCode::CONFLICT, "decided"),
            LedgerError::AlreadyApproved { .. } => (StatusCode::CONFLICT, "already_approved"),
            LedgerError::Agent { .. } => (StatusCode::FORBIDDEN, "agent"),
            LedgerError::NotAnApprover { .. } => (StatusCode::FORBIDDEN, "not_an_approver"),
            LedgerError::OwnRequest { .. } => (StatusCode::FORBIDDEN, "own_request"),
            LedgerError::OwnAgent { .. } => (StatusCode::FORBIDDEN, "own_agent"),
            LedgerError::EmptyGrant | LedgerError::BadReason { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            LedgerError::NotTheRequester { .. } => (StatusCode::FORBIDDEN, "not_the_requester"),
            LedgerError::AlreadyVoted => (StatusCode::CONFLICT, "already_voted"),
            LedgerError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The API's OpenAPI document.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The web inbox: a page, its script and its style, served as they are.
const INBOX_HTML: &str = include_str!("inbox/index.html");
const INBOX_JS: &str = include_str!("inbox/inbox.js");
const INBOX_CSS: &str = include_str!("inbox/inbox.css");

/// What the inbox's page may do: run its own script and style, call its
/// own origin, nothing else (no inline script, no other origin, no
/// framing).
const INBOX_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One of the inbox's files, with the headers that keep it to itself.
fn inbox_file(content_type: &'static str, body: &'static str) -> Response {
    use axum::http::header;
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, INBOX_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Every route the server answers, as method and path (the OpenAPI
/// document names the same), but the inbox's own files.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/approvals"),
    ("GET", "/api/v1/approvals/{id}"),
    ("POST", "/api/v1/approvals/{id}/approve"),
    ("POST", "/api/v1/approvals/{id}/deny"),
    ("POST", "/api/v1/approvals/{id}/justify"),
    ("GET", "/api/v1/grants"),
    ("DELETE", "/api/v1/grants/{id}"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/sessions"),
    ("POST", "/api/v1/sessions/{id}/cancel"),
    ("DELETE", "/api/v1/sessions/{id}"),
    ("POST", "/api/v1/reload"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
];

/// The routes of [`ROUTES`] that take no token.
pub const PUBLIC_ROUTES: &[&str] = &["/api/v1/openapi.json", "/metrics", "/healthz", "/readyz"];

/// The approvals API over `store`, authenticating callers with
/// `gateway`'s key set.
pub fn router(gateway: Arc<Gateway>, store: Arc<ApprovalStore>) -> Router {
    Router::new()
        .route("/", get(|| async { inbox_file("text/html; charset=utf-8", INBOX_HTML) }))
        .route("/inbox.js", get(|| async { inbox_file("text/javascript; charset=utf-8", INBOX_JS) }))
        .route("/inbox.css", get(|| async { inbox_file("text/css; charset=utf-8", INBOX_CSS) }))
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/api/v1/approvals", get(list_requests))
        .route("/api/v1/approvals/{id}", get(show_request))
        .route("/api/v1/approvals/{id}/approve", post(approve))
        .route("/api/v1/approvals/{id}/deny", post(deny))
        .route("/api/v1/approvals/{id}/justify", post(justify))
        .route("/api/v1/grants", get(list_grants))
        .route("/api/v1/grants/{id}", delete(revoke))
        .route("/api/v1/events", get(events))
        .route("/api/v1/sessions", get(list_sessions))
        .route("/api/v1/sessions/{id}/cancel", post(cancel_session))
        .route("/api/v1/sessions/{id}", delete(end_session))
        .route("/api/v1/reload", post(reload))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { ([(axum::http::header::CONTENT_TYPE, "text/plain")], "ok\n") }))
        .route("/readyz", get(ready))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such path") })
        .with_state(Admin { gateway, store })
}

/// Serves the admin API and the inbox on `listener` until the task is
/// dropped: over TLS with the gateway's certificate when it has one
/// (`[tls]`), in plain HTTP otherwise.
///
/// With [`Limits::DEFAULT`]: at most [`MAX_CONNECTIONS`] connections at
/// once (the next waits, unaccepted, until one closes), each closed after
/// [`IDLE_TIMEOUT`] without a byte either way, or when a request's head
/// takes longer than [`HEADER_TIMEOUT`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    store: Arc<ApprovalStore>,
) -> std::io::Result<()> {
    serve_with_limits(listener, gateway, store, Limits::DEFAULT).await
}

/// [`serve`] with other [`Limits`] (tests use short ones).
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    store: Arc<ApprovalStore>,
    limits: Limits,
) -> std::io::Result<()> {
    match gateway.server_tls() {
        Some(tls) => {
            let listener = Limited::new(TlsListener::new(listener, &tls)?, limits);
            axum::serve(listener, router(gateway, store)).await
        }
        None => axum::serve(Limited::new(listener, limits), router(gateway, store)).await,
    }
}

/// The caller, from their bearer token.
async fn caller(admin: &Admin, headers: &HeaderMap) -> Result<Approver, ApiError> {
    let unauthenticated = |m: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m);
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthenticated("an Authorization: Bearer header with your token is required".into()))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthenticated("the Authorization header must be `Bearer <token>`".into()))?;
    let identity =
        admin.gateway.verify_token(token).await.map_err(|e| unauthenticated(format!("token refused: {e}")))?;
    Ok(Approver {
        subject: identity.subject.clone(),
        groups: identity.groups.clone(),
        actor: identity.actor.as_ref().map(|a| a.name().to_string()),
    })
}

/// Whether `who` may see `request`: an approver of it, or the person whose
/// agent (or who) asked.
fn may_see(who: &Approver, approvers: &[String], requester: &str) -> bool {
    who.subject == requester || approvers.iter().any(|g| who.groups.contains(g))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
}

async fn list_requests(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = caller(&admin, &headers).await?;
    let pending = match query.state.as_deref() {
        None | Some("pending") => true,
        Some("decided") => false,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("state={other}: pending or decided"),
            ))
        }
    };
    let requests: Vec<Request> = admin
        .store
        .requests(pending, SystemTime::now())
        .into_iter()
        .filter(|r| may_see(&who, &r.approvers, &r.requester.subject))
        .collect();
    Ok(Json(json!({ "approvals": requests })))
}

async fn show_request(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Request>, ApiError> {
    let who = caller(&admin, &headers).await?;
    match admin.store.request(&id, SystemTime::now()) {
        Some(r) if may_see(&who, &r.approvers, &r.requester.subject) => Ok(Json(r)),
        // Not told apart from an unknown id.
        _ => Err(LedgerError::NoRequest(id).into()),
    }
}

/// A JSON body, or a 400 that says what is wrong with it.
fn body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("the JSON body: {e}")))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    #[serde(default)]
    reason: String,
    grant_for: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    #[serde(default)]
    reason: String,
}

async fn approve(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = caller(&admin, &headers).await?;
    let body: ApproveBody = body(&bytes)?;
    let grant_for =
        match body.grant_for.as_deref() {
            None => None,
            Some(text) => Some(crate::config::parse_duration(text).map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("grant_for {text:?}: {e}"))
            })?),
        };
    let progress = admin.store.approve(&id, &who, &body.reason, grant_for, SystemTime::now()).await?;
    tracing::info!(request = %id, approver = %who.subject, "approval given");
    Ok(Json(match progress {
        Progress::Counted { needed } => json!({"id": id, "state": "pending", "needed": needed}),
        Progress::Approved { grant } => json!({"id": id, "state": "approved", "grant": grant}),
    }))
}

async fn deny(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = caller(&admin, &headers).await?;
    let body: DenyBody = body(&bytes)?;
    if body.reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a denial needs a reason: the requester is told it",
        ));
    }
    admin.store.deny(&id, &who, &body.reason, SystemTime::now()).await?;
    tracing::info!(request = %id, approver = %who.subject, "approval denied");
    Ok(Json(json!({"id": id, "state": "denied"})))
}

/// The requester gives their reason after the notice (with their own
/// token, not their agent's).
async fn justify(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = caller(&admin, &headers).await?;
    let body: DenyBody = body(&bytes)?;
    admin.store.justify(&id, &who, &body.reason, SystemTime::now()).await?;
    tracing::info!(request = %id, requester = %who.subject, "reason given");
    Ok(Json(json!({"id": id, "justification": body.reason.trim()})))
}

async fn list_grants(State(admin): State<Admin>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    let who = caller(&admin, &headers).await?;
    let grants: Vec<Grant> = admin
        .store
        .grants(SystemTime::now())
        .into_iter()
        .filter(|g| may_see(&who, &g.approvers, &g.requester.subject))
        .collect();
    Ok(Json(json!({ "grants": grants })))
}

async fn revoke(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = caller(&admin, &headers).await?;
    admin.store.revoke(&id, &who, SystemTime::now()).await?;
    tracing::info!(grant = %id, by = %who.subject, "grant revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/events`: every change to a request the caller may see,
/// from now on, as server-sent events (`event:` the change's name,
/// `data:` its JSON, `id:` its number). A stream that falls behind the
/// events kept misses the oldest; a client reads the lists again then.
async fn events(
    State(admin): State<Admin>,
    headers: HeaderMap,
) -> Result<
    axum::response::sse::Sse<
        impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
    ApiError,
> {
    use axum::response::sse::{Event as Sse, KeepAlive};
    let who = caller(&admin, &headers).await?;
    let changes = admin.store.subscribe();
    let after = admin.store.last_event();
    let state = (admin.store, changes, after, who, std::collections::VecDeque::<Sse>::new());
    let stream = futures_util::stream::unfold(state, |(store, mut changes, mut after, who, mut ready)| async move {
        loop {
            if let Some(next) = ready.pop_front() {
                return Some((Ok(next), (store, changes, after, who, ready)));
            }
            if changes.changed().await.is_err() {
                return None;
            }
            for (n, event) in store.events_since(after) {
                after = n;
                let visible = store
                    .request(event.request(), SystemTime::now())
                    .is_some_and(|r| may_see(&who, &r.approvers, &r.requester.subject));
                if !visible {
                    continue;
                }
                let data = serde_json::to_string(&event).unwrap_or_default();
                ready.push_back(Sse::default().id(n.to_string()).event(event.name()).data(data));
            }
        }
    });
    Ok(axum::response::sse::Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Whether `who` is in one of the `[admin] operators` groups.
fn is_operator(admin: &Admin, who: &Approver) -> bool {
    admin.gateway.config.admin.as_ref().is_some_and(|a| a.operators.iter().any(|g| who.groups.contains(g)))
}

/// The caller, who must be a person (sessions and reloads are not for
/// agents).
async fn person(admin: &Admin, headers: &HeaderMap) -> Result<Approver, ApiError> {
    let who = caller(admin, headers).await?;
    if let Some(agent) = &who.actor {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "agent",
            format!("this is the token of an agent ({agent}): sessions and reloads take a person's own token"),
        ));
    }
    Ok(who)
}

async fn list_sessions(State(admin): State<Admin>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    let who = person(&admin, &headers).await?;
    let all = is_operator(&admin, &who);
    let now = SystemTime::now();
    let sessions: Vec<serde_json::Value> = admin
        .gateway
        .sessions
        .list()
        .into_iter()
        .filter(|s| all || s.info.subject == who.subject)
        .map(|s| {
            let age = now.duration_since(s.info.started).map_or(0, |d| d.as_secs());
            let mut value = serde_json::to_value(&s).unwrap_or_default();
            if let Some(o) = value.as_object_mut() {
                o.insert("age_seconds".into(), json!(age));
            }
            value
        })
        .collect();
    Ok(Json(json!({ "sessions": sessions })))
}

/// The live session `id`, when the caller may act on it.
fn session_for(admin: &Admin, who: &Approver, id: &str) -> Result<u64, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no live session {id}"));
    let n: u64 = id.parse().map_err(|_| not_found())?;
    let all = is_operator(admin, who);
    // Not told apart from an unknown id.
    admin
        .gateway
        .sessions
        .list()
        .into_iter()
        .find(|s| s.id == n && (all || s.info.subject == who.subject))
        .ok_or_else(not_found)?;
    Ok(n)
}

async fn cancel_session(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    order(&admin, &headers, &id, Control::Cancel).await
}

async fn end_session(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    order(&admin, &headers, &id, Control::Terminate).await
}

/// Sends `control` to session `id`, for a caller who may act on it.
async fn order(admin: &Admin, headers: &HeaderMap, id: &str, control: Control) -> Result<StatusCode, ApiError> {
    let who = person(admin, headers).await?;
    let n = session_for(admin, &who, id)?;
    let sent = match control {
        Control::Cancel => admin.gateway.sessions.cancel(n),
        Control::Terminate => admin.gateway.sessions.terminate(n),
    };
    if !sent {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no live session {id}")));
    }
    tracing::info!(session = n, by = %who.subject, order = ?control, "session ordered");
    Ok(StatusCode::NO_CONTENT)
}

async fn reload(State(admin): State<Admin>, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = person(&admin, &headers).await?;
    if !is_operator(&admin, &who) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_an_operator",
            "reloading takes a member of an [admin] operators group",
        ));
    }
    tracing::info!(by = %who.subject, "reload asked");
    let report = admin.gateway.reload().await;
    let ok = report.iter().all(|(_, r)| r.is_ok());
    let parts: serde_json::Map<String, serde_json::Value> = report
        .into_iter()
        .map(|(what, r)| {
            let value = match r {
                Ok(()) => json!({"reloaded": true}),
                Err(e) => json!({"reloaded": false, "error": e}),
            };
            (what.as_str().to_string(), value)
        })
        .collect();
    let status = if ok { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    Ok((status, Json(json!({ "reloaded": ok, "parts": parts }))).into_response())
}

/// What is live now, for the gauges.
fn live(admin: &Admin) -> crate::metrics::Live {
    use crate::session::registry::Activity;
    let mut live = crate::metrics::Live {
        connections: admin.gateway.active_sessions() as u64,
        approvals_pending: admin.store.requests(true, SystemTime::now()).len() as u64,
        ..crate::metrics::Live::default()
    };
    for s in admin.gateway.sessions.list() {
        match s.activity {
            Activity::Idle => live.idle += 1,
            Activity::Running => live.running += 1,
            Activity::Held => live.held += 1,
        }
    }
    live
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let text = admin.gateway.metrics.render(&live(&admin));
    ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

async fn ready(State(admin): State<Admin>) -> Response {
    let checks = admin.gateway.readiness().await;
    let ok = checks.iter().all(|(_, r)| r.is_ok());
    let shown: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        // Which check fails, not what it found (no token is needed here):
        // the gateway's log says that.
        .map(|(name, r)| (name.to_string(), json!(if r.is_ok() { "ok" } else { "failing" })))
        .collect();
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ok, "checks": shown }))).into_response()
}
