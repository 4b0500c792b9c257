/*
 * portcullis.h: the Portcullis policy engine behind a C ABI.
 *
 * Generated from crates/ffi by cbindgen; do not edit. See the crate docs
 * and the README section "Embedding the engine".
 *
 * Conventions: functions that can fail return a portcullis_result
 * (PORTCULLIS_RESULT_OK is 0) and write their out-pointers only on success;
 * portcullis_error() describes a failure. Handles made by a _new function
 * are released by its _free, which accepts NULL. Engines, identities, key
 * sets, decisions and maskers may be used from several threads at once.
 */

#ifndef PORTCULLIS_H
#define PORTCULLIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/**
 * What a call did. `PORTCULLIS_RESULT_OK` is 0; every other code is a
 * failure, numbered in blocks (1000: the call itself, 2000: policies,
 * 3000: identities and key sets, 3100: tokens). A number is never reused
 * for another meaning.
 *
 * `portcullis_error` turns a code into a message.
 */
enum portcullis_result
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  /**
   * Success.
   */
  PORTCULLIS_RESULT_OK = 0,
  /**
   * A bug inside the library was caught at the boundary; nothing was
   * written to the out-pointers. Please report it.
   */
  PORTCULLIS_RESULT_PANIC = 1000,
  /**
   * A pointer that must not be NULL was NULL.
   */
  PORTCULLIS_RESULT_NULL_PARAMETER = 1001,
  /**
   * A text argument is not UTF-8.
   */
  PORTCULLIS_RESULT_INVALID_UTF8 = 1002,
  /**
   * The caller's buffer is too small for the answer; nothing was
   * written. Call again with a larger buffer.
   */
  PORTCULLIS_RESULT_INSUFFICIENT_SIZE = 1003,
  /**
   * An argument is out of range or not what the function reads (an
   * index past the end, a length or count whose bytes exceed
   * `PTRDIFF_MAX`, a `search_path` that does not parse, a value that
   * overlaps the output buffer).
   */
  PORTCULLIS_RESULT_INVALID_PARAMETER = 1004,
  /**
   * The policy text is not TOML, or not the shape of a policy.
   */
  PORTCULLIS_RESULT_POLICY_FORMAT = 2000,
  /**
   * A policy value is well-formed but cannot be used.
   */
  PORTCULLIS_RESULT_POLICY_INVALID = 2001,
  /**
   * The keys given with the policy do not fit it.
   */
  PORTCULLIS_RESULT_POLICY_KEYS = 2002,
  /**
   * The identity JSON is not `{"subject": ..., "groups": [...], "actor": {...}}`.
   */
  PORTCULLIS_RESULT_IDENTITY_JSON = 3000,
  /**
   * The JWKS document is not a usable key set.
   */
  PORTCULLIS_RESULT_JWKS_INVALID = 3001,
  /**
   * The token is longer than the policy accepts.
   */
  PORTCULLIS_RESULT_TOKEN_OVERSIZED = 3100,
  /**
   * The token is not three base64url parts holding JSON.
   */
  PORTCULLIS_RESULT_TOKEN_MALFORMED = 3101,
  /**
   * The token is unsigned (`alg: none`).
   */
  PORTCULLIS_RESULT_TOKEN_UNSIGNED = 3102,
  /**
   * The token's algorithm is not accepted.
   */
  PORTCULLIS_RESULT_TOKEN_UNSUPPORTED_ALGORITHM = 3103,
  /**
   * The token's algorithm does not match its key.
   */
  PORTCULLIS_RESULT_TOKEN_ALGORITHM_MISMATCH = 3104,
  /**
   * The token names no key while the key set holds several.
   */
  PORTCULLIS_RESULT_TOKEN_MISSING_KEY_ID = 3105,
  /**
   * The token names a key the key set does not hold.
   */
  PORTCULLIS_RESULT_TOKEN_UNKNOWN_KEY_ID = 3106,
  /**
   * The key set holds no usable key.
   */
  PORTCULLIS_RESULT_TOKEN_NO_KEYS = 3107,
  /**
   * The token has a critical header extension the engine does not implement.
   */
  PORTCULLIS_RESULT_TOKEN_CRITICAL_HEADER = 3108,
  /**
   * The signature does not verify.
   */
  PORTCULLIS_RESULT_TOKEN_BAD_SIGNATURE = 3109,
  /**
   * The token has no valid expiry.
   */
  PORTCULLIS_RESULT_TOKEN_MISSING_EXPIRY = 3110,
  /**
   * The token has expired.
   */
  PORTCULLIS_RESULT_TOKEN_EXPIRED = 3111,
  /**
   * The token is not valid yet (`nbf`).
   */
  PORTCULLIS_RESULT_TOKEN_NOT_YET_VALID = 3112,
  /**
   * The token was issued in the future (`iat`).
   */
  PORTCULLIS_RESULT_TOKEN_ISSUED_IN_FUTURE = 3113,
  /**
   * The token's issuer is not the configured one.
   */
  PORTCULLIS_RESULT_TOKEN_WRONG_ISSUER = 3114,
  /**
   * The token's audience is not a configured one.
   */
  PORTCULLIS_RESULT_TOKEN_WRONG_AUDIENCE = 3115,
  /**
   * The token has no subject.
   */
  PORTCULLIS_RESULT_TOKEN_MISSING_SUBJECT = 3116,
  /**
   * The token was refused for a reason this version has no code for.
   */
  PORTCULLIS_RESULT_TOKEN_REJECTED = 3199,
  /**
   * The definitions JSON is not `{"views": [...], "functions": [...]}`.
   */
  PORTCULLIS_RESULT_DEFINITIONS_JSON = 3300,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum portcullis_result portcullis_result;
#else
typedef uint32_t portcullis_result;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * A verdict. 0 is none of them, so zeroed memory never reads as "allow".
 */
enum portcullis_verdict
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  /**
   * Let the statement run.
   */
  PORTCULLIS_VERDICT_ALLOW = 1,
  /**
   * Refuse it.
   */
  PORTCULLIS_VERDICT_DENY = 2,
  /**
   * Hold it until a person approves.
   */
  PORTCULLIS_VERDICT_REQUIRE_APPROVAL = 3,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum portcullis_verdict portcullis_verdict;
#else
typedef uint32_t portcullis_verdict;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * The engine's answer for one SQL text (an opaque, immutable handle:
 * share it between threads freely). Read it with the
 * `portcullis_decision_*` accessors; free it with
 * `portcullis_decision_free`.
 */
typedef struct portcullis_decision portcullis_decision;

/**
 * The views and functions of one database at one moment, as the caller
 * read them from its catalog (an opaque handle). Read them once per
 * database and give the same handle to every session there with
 * `portcullis_session_set_definitions`; read them again (a new handle)
 * after DDL. Sessions keep what they were given: the handle may be freed while
 * they use it.
 */
typedef struct portcullis_definitions portcullis_definitions;

/**
 * A compiled policy (an opaque handle). Build it once with
 * `portcullis_engine_new` and share it: every function that takes a
 * `const portcullis_engine *` may be called from several threads at once.
 * Free it with `portcullis_engine_free` once no thread uses it.
 */
typedef struct portcullis_engine portcullis_engine;

/**
 * The caller a decision is made for: a person or workload, its groups, and
 * the agent acting for it, if any (an opaque, immutable handle: share it
 * between threads freely). Made by `portcullis_identity_new` from JSON
 * or by `portcullis_verify_jwt` from a token.
 */
typedef struct portcullis_identity portcullis_identity;

/**
 * An OIDC key set (JWKS), parsed once (an opaque, immutable handle).
 */
typedef struct portcullis_jwks portcullis_jwks;

/**
 * The masking plan of one statement's result for one identity (an
 * opaque, immutable handle: share it between threads freely). Build it
 * once per result with `portcullis_masker_new`, then call
 * `portcullis_mask_row` on every row.
 */
typedef struct portcullis_masker portcullis_masker;

/**
 * What a decision reads from the connection: its `search_path`, its
 * `standard_conforming_strings`, its user, and the statements prepared in
 * it with SQL `PREPARE` (an opaque handle). One per client connection.
 * Functions taking a `const portcullis_session *` may run on several
 * threads at once; the ones taking `portcullis_session *` change it and
 * need it to themselves.
 */
typedef struct portcullis_session portcullis_session;

/**
 * A borrowed string handed to C: `len` bytes at `data`, not
 * NUL-terminated. `data` is NULL (and `len` 0) for "none".
 *
 * The bytes live as long as the handle they were read from.
 *
 * ```c
 * portcullis_str rule = portcullis_decision_rule(decision);
 * if (rule.data) printf("rule: %.*s\n", (int)rule.len, rule.data);
 * ```
 */
typedef struct portcullis_str {
  /**
   * The first byte, or NULL.
   */
  const char *data;
  /**
   * How many bytes.
   */
  size_t len;
} portcullis_str;

/**
 * One result column, as the server described it (RowDescription).
 */
typedef struct portcullis_column {
  /**
   * The column's name in the result (UTF-8, `name_len` bytes).
   */
  const char *name;
  /**
   * Length of `name`.
   */
  size_t name_len;
  /**
   * `schema.table.column` when the server reports the column as a plain
   * reference to a table column (RowDescription's table OID and
   * attribute number, looked up in the catalog); NULL when not.
   */
  const char *source;
  /**
   * Length of `source`.
   */
  size_t source_len;
  /**
   * The column's type OID (0 when unknown).
   */
  uint32_t type_oid;
  /**
   * Whether its values arrive in binary format: nonzero for binary, 0
   * for text. (A byte rather than a C `bool`, so that no byte a caller
   * leaves in it is undefined.)
   */
  uint8_t binary;
} portcullis_column;

/**
 * One value of a row: `len` bytes at `data`, or SQL NULL.
 */
typedef struct portcullis_cell {
  /**
   * The value's bytes (ignored when `is_null`).
   */
  const uint8_t *data;
  /**
   * How many.
   */
  size_t len;
  /**
   * Nonzero when the value is SQL NULL. The library writes 0 or 1.
   */
  uint8_t is_null;
} portcullis_cell;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * Decides one SQL text (one or more statements) for `identity` in
 * `session`, with PostgreSQL's own grammar. Every text gets a decision:
 * what the engine cannot read is denied, so the result is
 * `PORTCULLIS_RESULT_OK` whenever the arguments are usable. `session` may
 * be NULL for a fresh session in the policy's starting state.
 *
 * ```c
 * portcullis_decision *d = NULL;
 * const char *sql = "DELETE FROM orders";
 * if (portcullis_decide(engine, identity, session, sql, strlen(sql), &d) == PORTCULLIS_RESULT_OK
 *     && portcullis_decision_verdict(d) == PORTCULLIS_VERDICT_ALLOW) {
 *     // forward it
 * }
 * portcullis_decision_free(d);
 * ```
 *
 * # Safety
 *
 * `engine` and `identity` must be live, `session` NULL or live (and not
 * being changed by another thread), `sql` valid for reads of `sql_len`
 * bytes, `out_decision` valid for a write.
 */
portcullis_result portcullis_decide(const struct portcullis_engine *engine,
                                    const struct portcullis_identity *identity,
                                    const struct portcullis_session *session,
                                    const char *sql,
                                    size_t sql_len,
                                    struct portcullis_decision **out_decision);

/**
 * The verdict: the strictest of the text's statements. NULL gives
 * `PORTCULLIS_VERDICT_DENY`.
 *
 * # Safety
 *
 * `decision` must be NULL or live.
 */
portcullis_verdict portcullis_decision_verdict(const struct portcullis_decision *decision);

/**
 * The name of the rule behind the verdict; a NULL string when no rule
 * matched (the policy's default decided).
 *
 * # Safety
 *
 * `decision` must be NULL or live; the string lives as long as it.
 */
struct portcullis_str portcullis_decision_rule(const struct portcullis_decision *decision);

/**
 * Why, in words fit to show the client.
 *
 * # Safety
 *
 * `decision` must be NULL or live; the string lives as long as it.
 */
struct portcullis_str portcullis_decision_reason(const struct portcullis_decision *decision);

/**
 * The most rows any statement may return; 0 means no cap.
 *
 * # Safety
 *
 * `decision` must be NULL (gives 0) or live.
 */
uint64_t portcullis_decision_max_rows(const struct portcullis_decision *decision);

/**
 * How many statements the text held.
 *
 * # Safety
 *
 * `decision` must be NULL (gives 0) or live.
 */
size_t portcullis_decision_statement_count(const struct portcullis_decision *decision);

/**
 * The whole decision as one line of JSON (docs/policy.md §6 decision format:
 * verdict, reason, rule, max_rows, approvers, subject, actor, and every
 * statement with its class, tables, columns and functions). Built on the
 * first call.
 *
 * # Safety
 *
 * `decision` must be NULL or live; the string lives as long as it.
 */
struct portcullis_str portcullis_decision_json(const struct portcullis_decision *decision);

/**
 * Frees a decision. NULL does nothing.
 *
 * # Safety
 *
 * `decision` must be NULL or live, and not in use by another thread.
 */
void portcullis_decision_free(struct portcullis_decision *decision);

/**
 * The definitions from JSON: `{"views": [...], "functions": [...],
 * "rules": [...], "row_policies": [...], "triggers": [...],
 * "catalog_relations": [...]}`, each optional.
 *
 * A view is `{"schema": "public", "name": "v", "kind": "view", "columns":
 * ["id", "tel"], "definition": " SELECT ..."}`, one per view and
 * materialized view (`"kind": "materialized"`; `"view"` when omitted)
 * outside `pg_catalog` and `information_schema`: `columns` are its column
 * names in order, `definition` is `pg_get_viewdef(oid)` read on a
 * connection whose `search_path` is empty (every name outside
 * `pg_catalog` qualified).
 *
 * A function is `{"schema": "public", "name": "f", "language": "sql",
 * "body": "SELECT ...", "sql_standard": false, "search_path": "app,
 * public"}`, one per overload: `body` is `prosrc`, or for a SQL-standard
 * body (`"sql_standard": true`) the whole `pg_get_functiondef(oid)` read
 * on a connection with an empty `search_path`; `search_path` is what its
 * `SET search_path` clause gives it, if any. Functions in other
 * languages are listed too (without a body): a call to them is opaque.
 *
 * A rule is `{"schema": "public", "name": "orders", "definition": "CREATE
 * RULE ..."}`, one per rewrite rule other than a view's `_RETURN`:
 * `name` is the relation it is on, `definition` is `pg_get_ruledef(oid)`
 * read on a connection whose `search_path` is empty. A row policy is
 * `{"schema": "public", "name": "docs", "using": "...", "check": "..."}`,
 * one per policy of a table whose row security is on: `using` and `check`
 * are `pg_get_expr(polqual, polrelid)` and `pg_get_expr(polwithcheck,
 * polrelid)` read the same way (each optional). A trigger is `{"schema":
 * "public", "name": "orders", "function_schema": "audit", "function":
 * "log_change"}`, one per trigger the server fires (`NOT tgisinternal`,
 * not disabled): `name` is its table. `catalog_relations` are
 * the names of the relations in `pg_catalog` whose OID is 16384 or more
 * (not the server's own: a superuser moved them there).
 *
 * Unknown fields are refused (`PORTCULLIS_RESULT_DEFINITIONS_JSON`).
 *
 * ```c
 * const char *json = "{\"views\":[{\"schema\":\"public\",\"name\":\"v\",\"columns\":[\"id\"],"
 *                    "\"definition\":\" SELECT s.id FROM private.secrets s;\"}]}";
 * portcullis_definitions *definitions = NULL;
 * portcullis_definitions_new(json, strlen(json), &definitions);
 * portcullis_session_set_definitions(session, definitions);
 * portcullis_definitions_free(definitions);
 * ```
 *
 * # Safety
 *
 * `json` must be valid for reads of `json_len` bytes; `out_definitions` for a write.
 */
portcullis_result portcullis_definitions_new(const char *json,
                                             size_t json_len,
                                             struct portcullis_definitions **out_definitions);

/**
 * Definitions that could not be read (`reason` says why): a session given them
 * refuses, as opaque, every statement naming a relation outside the
 * system schemas, since any of them might be a view.
 *
 * # Safety
 *
 * `reason` must be valid for reads of `reason_len` bytes; `out_definitions` for a write.
 */
portcullis_result portcullis_definitions_unavailable(const char *reason,
                                                     size_t reason_len,
                                                     struct portcullis_definitions **out_definitions);

/**
 * How many views they hold (functions aside); 0 for NULL.
 *
 * # Safety
 *
 * `definitions` must be NULL or live.
 */
size_t portcullis_definitions_count(const struct portcullis_definitions *definitions);

/**
 * Gives the session the definitions of its database: statements naming
 * views or calling SQL functions are then judged by what they read (with
 * the policy's `settings.views = "expand"`, the default). NULL takes them
 * away (views are judged by name). The session keeps its own reference.
 *
 * # Safety
 *
 * `session` must be live and not in use by another thread; `definitions`
 * NULL or live.
 */
portcullis_result portcullis_session_set_definitions(struct portcullis_session *session,
                                                     const struct portcullis_definitions *definitions);

/**
 * Frees definitions. NULL does nothing. Sessions given them keep them.
 *
 * # Safety
 *
 * `definitions` must be NULL or live, and not in use by another thread.
 */
void portcullis_definitions_free(struct portcullis_definitions *definitions);

/**
 * Loads and compiles a policy.
 *
 * - `policy`, `policy_len`: the policy's TOML text (UTF-8, not
 *   NUL-terminated).
 * - `name`, `name_len`: the name error messages use for the text, such as
 *   its file name; empty gives `policy`.
 * - `pseudonym_key`, `pseudonym_key_len`: the key of the `hash` masking
 *   strategy; NULL and 0 when the policy has none.
 *
 * On success writes the new engine to `*out_engine`. A policy error returns
 * `PORTCULLIS_RESULT_POLICY_FORMAT`, `_POLICY_INVALID` or `_POLICY_KEYS`;
 * `portcullis_error` then gives
 * `name:line:column: what`, and
 * `portcullis_error_location` the line
 * and column.
 *
 * ```c
 * portcullis_engine *engine = NULL;
 * portcullis_result r = portcullis_engine_new(text, text_len, "policy.toml", 11, NULL, 0, &engine);
 * ```
 *
 * # Safety
 *
 * Each pointer must be NULL or valid for reads of its length;
 * `out_engine` must be valid for a write.
 */
portcullis_result portcullis_engine_new(const char *policy,
                                        size_t policy_len,
                                        const char *name,
                                        size_t name_len,
                                        const uint8_t *pseudonym_key,
                                        size_t pseudonym_key_len,
                                        struct portcullis_engine **out_engine);

/**
 * Frees an engine. NULL does nothing. Decisions, sessions and maskers made
 * from it stay valid: they hold what they need.
 *
 * # Safety
 *
 * `engine` must be NULL or from `portcullis_engine_new`, not yet freed,
 * and not in use by another thread.
 */
void portcullis_engine_free(struct portcullis_engine *engine);

/**
 * The library's name and version, NUL-terminated, static.
 *
 * ```c
 * printf("%s\n", portcullis_version());   // portcullis-ffi/0.1.0
 * ```
 */
const char *portcullis_version(void);

/**
 * Writes the message of `result` into `buf`, NUL-terminated, and stores
 * the number of bytes written (without the NUL) in `*out_written`.
 *
 * When the calling thread's most recent failure returned this same code,
 * the message is that failure's own: for a policy it starts with
 * `name:line:column:`, for a token it says which check refused it (never
 * the token). Otherwise it is the code's fixed message. A message longer
 * than `len - 1` bytes is cut at a character boundary. An unknown code
 * gets "unknown result code N".
 *
 * With a NULL `buf` or a `len` of 0 nothing is written, not even
 * `*out_written`; `out_written` may be NULL. This function and
 * `portcullis_error_location` never replace the failure they describe.
 *
 * ```c
 * char msg[512];
 * size_t n;
 * portcullis_result r = portcullis_engine_new(text, strlen(text), "policy.toml", 11, NULL, 0, &engine);
 * if (r != PORTCULLIS_RESULT_OK) {
 *     portcullis_error(r, msg, sizeof msg, &n);
 *     fprintf(stderr, "error %u: %s\n", r, msg);   // policy.toml:4:1: unknown field `efect` ...
 * }
 * ```
 *
 * # Safety
 *
 * `buf` must be valid for writes of `len` bytes; `out_written`, when not
 * NULL, must be valid for a write.
 */
void portcullis_error(uint32_t result,
                      char *buf,
                      size_t len,
                      size_t *out_written);

/**
 * The line and column (1-based) of this thread's most recent failure with
 * code `result`, when it has a place in the caller's text: policy errors
 * do. Returns `PORTCULLIS_RESULT_OK` and writes both; otherwise returns
 * `PORTCULLIS_RESULT_INVALID_PARAMETER` and writes nothing.
 *
 * # Safety
 *
 * `out_line` and `out_column` must be valid for writes.
 */
portcullis_result portcullis_error_location(uint32_t result, size_t *out_line, size_t *out_column);

/**
 * Makes an identity from JSON:
 * `{"subject": "alice", "groups": ["developers"], "actor": "copilot-7"}`.
 * `groups` and `actor` are optional; `actor` is a name or an object
 * `{"subject": ..., "client_id": ..., "chain": [...]}`. Unknown fields are
 * refused (`PORTCULLIS_RESULT_IDENTITY_JSON`), so a misspelt `group` does
 * not silently give an identity without groups.
 *
 * ```c
 * const char *who = "{\"subject\":\"alice\",\"groups\":[\"ai-agents\"],\"actor\":\"copilot-7\"}";
 * portcullis_identity *identity = NULL;
 * portcullis_identity_new(who, strlen(who), &identity);
 * ```
 *
 * # Safety
 *
 * `json` must be valid for reads of `json_len` bytes; `out_identity` for a write.
 */
portcullis_result portcullis_identity_new(const char *json,
                                          size_t json_len,
                                          struct portcullis_identity **out_identity);

/**
 * The identity's subject. NULL gives a NULL string.
 *
 * # Safety
 *
 * `identity` must be NULL or a live identity; the string lives as long as it.
 */
struct portcullis_str portcullis_identity_subject(const struct portcullis_identity *identity);

/**
 * The identity as JSON (`{"subject":..,"groups":[..],"actor":{..}}`): what
 * a token said, for logs and audit. Built on the first call. NULL gives a
 * NULL string.
 *
 * # Safety
 *
 * `identity` must be NULL or a live identity; the string lives as long as it.
 */
struct portcullis_str portcullis_identity_json(const struct portcullis_identity *identity);

/**
 * Frees an identity. NULL does nothing.
 *
 * # Safety
 *
 * `identity` must be NULL or live, and not in use by another thread.
 */
void portcullis_identity_free(struct portcullis_identity *identity);

/**
 * Parses a JWKS document (`{"keys": [...]}`). Keys the engine cannot use
 * are skipped; a document with no usable key still loads, and every token
 * checked against it is refused (`PORTCULLIS_RESULT_TOKEN_NO_KEYS`). A
 * document that is not a key set gives `PORTCULLIS_RESULT_JWKS_INVALID`.
 *
 * ```c
 * portcullis_jwks *jwks = NULL;
 * portcullis_result r = portcullis_jwks_new(doc, doc_len, &jwks);
 * ```
 *
 * # Safety
 *
 * `json` must be valid for reads of `json_len` bytes; `out_jwks` for a write.
 */
portcullis_result portcullis_jwks_new(const uint8_t *json,
                                      size_t json_len,
                                      struct portcullis_jwks **out_jwks);

/**
 * How many usable keys the key set holds.
 *
 * # Safety
 *
 * `jwks` must be NULL (gives 0) or live.
 */
size_t portcullis_jwks_key_count(const struct portcullis_jwks *jwks);

/**
 * Frees a key set. NULL does nothing.
 *
 * # Safety
 *
 * `jwks` must be NULL or live, and not in use by another thread.
 */
void portcullis_jwks_free(struct portcullis_jwks *jwks);

/**
 * Verifies an OIDC token (a JWT) against `jwks` and maps its claims with
 * the engine's policy (`[identity]`: claim names, issuer, audience,
 * leeway). `now_unix_seconds` is the current time: the library reads no
 * clock. On success writes a new identity to `*out_identity`; a refused
 * token gives a `PORTCULLIS_RESULT_TOKEN_*` code (or `_JWKS_INVALID`), and
 * `portcullis_error` says which check refused
 * it. No message ever holds the token.
 *
 * ```c
 * portcullis_identity *who = NULL;
 * portcullis_result r = portcullis_verify_jwt(engine, jwks, token, strlen(token), (uint64_t)time(NULL), &who);
 * ```
 *
 * # Safety
 *
 * `engine` and `jwks` must be live; `token` valid for reads of `token_len`
 * bytes; `out_identity` valid for a write.
 */
portcullis_result portcullis_verify_jwt(const struct portcullis_engine *engine,
                                        const struct portcullis_jwks *jwks,
                                        const char *token,
                                        size_t token_len,
                                        uint64_t now_unix_seconds,
                                        struct portcullis_identity **out_identity);

/**
 * Plans the masking of the result of statement `statement` (0-based) of
 * `decision`, for `identity`, from the `n_columns` columns the server
 * described. Masks follow each column's lineage through the statement:
 * `SELECT upper(email) AS e` is masked as `email` is.
 *
 * ```c
 * portcullis_column cols[2] = {
 *     { "id", 2, "public.users.id", 15, 23, 0 },
 *     { "email", 5, "public.users.email", 18, 25, 0 },
 * };
 * portcullis_masker *m = NULL;
 * portcullis_masker_new(engine, identity, decision, 0, cols, 2, &m);
 * ```
 *
 * # Safety
 *
 * The handles must be live; `columns` valid for reads of `n_columns`
 * entries, each with its strings valid for reads of their lengths;
 * `out_masker` valid for a write.
 */
portcullis_result portcullis_masker_new(const struct portcullis_engine *engine,
                                        const struct portcullis_identity *identity,
                                        const struct portcullis_decision *decision,
                                        size_t statement,
                                        const struct portcullis_column *columns,
                                        size_t n_columns,
                                        struct portcullis_masker **out_masker);

/**
 * Whether rows pass untouched (no column masked, no detector active): the
 * caller may skip `portcullis_mask_row`. NULL gives false.
 *
 * # Safety
 *
 * `masker` must be NULL or live.
 */
bool portcullis_masker_is_noop(const struct portcullis_masker *masker);

/**
 * Whether column `column` must be described to the client as `text`
 * (type OID 25, text format): its values are masked into text that no
 * longer fits the column's own type.
 *
 * # Safety
 *
 * `masker` must be NULL (gives false) or live.
 */
bool portcullis_masker_retyped(const struct portcullis_masker *masker, size_t column);

/**
 * Masks one row. `cells` holds the row's `n_cells` values (as many as the
 * masker's columns). Values that change are written one after another
 * into `buf` and their cells are pointed at them (a value masked to NULL
 * gets `is_null` set); other cells are left alone, and the bytes they
 * point to are never written. On success `*out_used` is how many bytes of
 * `buf` were used and `*out_changed` how many values changed. A no-op
 * masker (`portcullis_masker_is_noop`) does not read the row at all.
 *
 * When the masked values do not fit in `buf_len` bytes, returns
 * `PORTCULLIS_RESULT_INSUFFICIENT_SIZE` and changes nothing: call again
 * with a larger buffer (masking is deterministic). `buf` may be NULL (with
 * `buf_len` 0) when no masked value needs a byte, as for a mask to NULL. A
 * value that overlaps `buf` gives `PORTCULLIS_RESULT_INVALID_PARAMETER`:
 * mask each row into a buffer of its own, not into the one an earlier
 * call's values still point to.
 *
 * ```c
 * portcullis_cell row[2] = { { (const uint8_t *)"7", 1, 0 }, { (const uint8_t *)"ann@example.com", 15, 0 } };
 * uint8_t buf[256];
 * size_t used, changed;
 * portcullis_mask_row(m, row, 2, buf, sizeof buf, &used, &changed);
 * // row[1] now points into buf: "****@example.com" (with an `email` mask)
 * ```
 *
 * # Safety
 *
 * `masker` must be live; `cells` valid for reads and writes of `n_cells`
 * entries, each cell that is not NULL valid for reads of its length; `buf`
 * valid for writes of `buf_len` bytes; `out_used` and `out_changed` valid
 * for writes.
 */
portcullis_result portcullis_mask_row(const struct portcullis_masker *masker,
                                      struct portcullis_cell *cells,
                                      size_t n_cells,
                                      uint8_t *buf,
                                      size_t buf_len,
                                      size_t *out_used,
                                      size_t *out_changed);

/**
 * Frees a masker. NULL does nothing.
 *
 * # Safety
 *
 * `masker` must be NULL or live, and not in use by another thread.
 */
void portcullis_masker_free(struct portcullis_masker *masker);

/**
 * A new session in the state the engine's policy starts connections in
 * (`[settings] search_path`, `standard_conforming_strings` on).
 *
 * ```c
 * portcullis_session *session = NULL;
 * portcullis_session_new(engine, &session);
 * ```
 *
 * # Safety
 *
 * `engine` must be live; `out_session` valid for a write.
 */
portcullis_result portcullis_session_new(const struct portcullis_engine *engine,
                                         struct portcullis_session **out_session);

/**
 * Sets the session's `search_path` (and what `RESET search_path` returns
 * to) from the setting's text as the server shows it, such as
 * `"$user", public`: quoted names keep their case, others are folded to
 * lower case. Text that does not parse gives
 * `PORTCULLIS_RESULT_INVALID_PARAMETER` and changes nothing.
 *
 * ```c
 * portcullis_session_set_search_path(session, "app, public", 11);
 * ```
 *
 * # Safety
 *
 * `session` must be live and not in use by another thread; `setting`
 * valid for reads of `setting_len` bytes.
 */
portcullis_result portcullis_session_set_search_path(struct portcullis_session *session,
                                                     const char *setting,
                                                     size_t setting_len);

/**
 * Sets `standard_conforming_strings` (on by default): whether `'\'` is a
 * whole string, as the server reads it. Statements prepared afterwards
 * are read with the new value.
 *
 * # Safety
 *
 * `session` must be live and not in use by another thread.
 */
portcullis_result portcullis_session_set_standard_conforming_strings(struct portcullis_session *session,
                                                                     bool on);

/**
 * Sets the database user the session logged in as (what `$user` in the
 * `search_path` names).
 *
 * # Safety
 *
 * `session` must be live and not in use by another thread; `user` valid
 * for reads of `user_len` bytes.
 */
portcullis_result portcullis_session_set_user(struct portcullis_session *session,
                                              const char *user,
                                              size_t user_len);

/**
 * Records a statement prepared with SQL `PREPARE name AS sql`, so that a
 * later `EXECUTE name` is judged by what `sql` does. The session's current
 * `standard_conforming_strings` is recorded with it.
 *
 * # Safety
 *
 * `session` must be live and not in use by another thread; `name` and
 * `sql` valid for reads of their lengths.
 */
portcullis_result portcullis_session_add_prepared(struct portcullis_session *session,
                                                  const char *name,
                                                  size_t name_len,
                                                  const char *sql,
                                                  size_t sql_len);

/**
 * Applies what the statements of `decision` do to the session, once they
 * ran: `SET search_path`, `RESET`, `PREPARE`, `DEALLOCATE`, `DISCARD`, and
 * `BEGIN`, `COMMIT`, `ROLLBACK` and savepoints, which the session follows:
 * a `COMMIT` or `ROLLBACK` in a later decision returns the path to what
 * the server returns it to (a `SET LOCAL` ends, a rolled-back `SET` is
 * undone). Call it after the server ran an allowed statement, with the
 * decision made for this session. Outside a transaction block, the
 * session cannot see where the server's transaction ends: a `SET LOCAL`
 * there leaves the schemas of both paths in the session.
 *
 * ```c
 * portcullis_decide(engine, identity, session, "SET search_path = app", 21, &d);
 * // ... the server ran it ...
 * portcullis_session_apply(session, d);
 * ```
 *
 * # Safety
 *
 * `session` must be live and not in use by another thread; `decision` live.
 */
portcullis_result portcullis_session_apply(struct portcullis_session *session,
                                           const struct portcullis_decision *decision);

/**
 * Frees a session. NULL does nothing.
 *
 * # Safety
 *
 * `session` must be NULL or live, and not in use by another thread.
 */
void portcullis_session_free(struct portcullis_session *session);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* PORTCULLIS_H */
