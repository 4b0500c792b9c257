/*
 * The C ABI's contract, exercised from C: result codes and messages,
 * out-pointers untouched on failure, NULL and bad UTF-8, sessions,
 * masking into a caller buffer, token verification, and one engine shared
 * by several threads. Run by tests/c.rs, under valgrind.
 *
 * usage: abi POLICY_FILE JWKS_FILE TOKEN_FILE
 *   POLICY_FILE  examples/policy.toml
 *   JWKS_FILE    a key set; TOKEN_FILE a token it signs, for alice@example.com
 *                in ai-agents acting through copilot-7, valid for an hour
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "portcullis.h"

static int failures = 0;
static int checks = 0;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        checks++;                                                          \
        if (!(cond)) {                                                     \
            failures++;                                                    \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

#define S(literal) literal, (sizeof literal - 1)

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "abi: cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

/* The message of `r` for this thread, in a static buffer per call site's use. */
static const char *message(portcullis_result r, char *buf, size_t len) {
    size_t n = 0;
    portcullis_error(r, buf, len, &n);
    return buf;
}

static int str_is(portcullis_str s, const char *want) {
    return s.data && s.len == strlen(want) && memcmp(s.data, want, s.len) == 0;
}

static int str_has(portcullis_str s, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; s.data && i + n <= s.len; i++)
        if (memcmp(s.data + i, needle, n) == 0) return 1;
    return 0;
}

static portcullis_engine *engine_from(const char *text, size_t len) {
    portcullis_engine *engine = NULL;
    portcullis_result r = portcullis_engine_new(text, len, S("policy.toml"), NULL, 0, &engine);
    if (r != PORTCULLIS_RESULT_OK) {
        char msg[512];
        fprintf(stderr, "abi: engine: %s\n", message(r, msg, sizeof msg));
        exit(2);
    }
    return engine;
}

static portcullis_identity *identity_from(const char *json) {
    portcullis_identity *identity = NULL;
    portcullis_result r = portcullis_identity_new(json, strlen(json), &identity);
    if (r != PORTCULLIS_RESULT_OK) {
        char msg[512];
        fprintf(stderr, "abi: identity: %s\n", message(r, msg, sizeof msg));
        exit(2);
    }
    return identity;
}

/* Decides `sql` and returns its verdict (0 when the call failed). */
static portcullis_verdict verdict_of(const portcullis_engine *e, const portcullis_identity *who,
                                     const portcullis_session *s, const char *sql, size_t len) {
    portcullis_decision *d = NULL;
    if (portcullis_decide(e, who, s, sql, len, &d) != PORTCULLIS_RESULT_OK) return 0;
    portcullis_verdict v = portcullis_decision_verdict(d);
    portcullis_decision_free(d);
    return v;
}

/* Whether the decision's JSON for `sql` holds `needle`. */
static int decision_has(const portcullis_engine *e, const portcullis_identity *who, const portcullis_session *s,
                        const char *sql, size_t len, const char *needle) {
    portcullis_decision *d = NULL;
    if (portcullis_decide(e, who, s, sql, len, &d) != PORTCULLIS_RESULT_OK) return 0;
    int has = str_has(portcullis_decision_json(d), needle);
    portcullis_decision_free(d);
    return has;
}

static void test_errors(void) {
    char msg[512];
    size_t n = 0, line = 0, column = 0;
    portcullis_engine *sentinel = (portcullis_engine *)&checks, *engine = sentinel;

    const char bad[] = "version = 1\n[[rule]]\nname = \"x\"\nefect = \"allow\"\n";
    portcullis_result r = portcullis_engine_new(S(bad), S("bad.toml"), NULL, 0, &engine);
    CHECK(r == PORTCULLIS_RESULT_POLICY_FORMAT, "got %u", (unsigned)r);
    CHECK(engine == sentinel, "the out-pointer was written on failure");
    portcullis_error(r, msg, sizeof msg, &n);
    CHECK(strncmp(msg, "bad.toml:4:1: unknown field `efect`", 35) == 0, "message: %s", msg);
    CHECK(n == strlen(msg), "written %zu, strlen %zu", n, strlen(msg));
    CHECK(portcullis_error_location(r, &line, &column) == PORTCULLIS_RESULT_OK && line == 4 && column == 1,
          "location %zu:%zu", line, column);

    const char invalid[] = "version = 1\n[[rule]]\nname = \"x\"\neffect = \"allow\"\ntables = [\"[\"]\n";
    r = portcullis_engine_new(S(invalid), S("p.toml"), NULL, 0, &engine);
    CHECK(r == PORTCULLIS_RESULT_POLICY_INVALID, "got %u", (unsigned)r);
    CHECK(strstr(message(r, msg, sizeof msg), "p.toml:5:11: table pattern `[`") == msg, "message: %s", msg);
    CHECK(portcullis_error_location(r, &line, &column) == PORTCULLIS_RESULT_OK && line == 5 && column == 11,
          "location %zu:%zu", line, column);
    /* Only the thread's last failure keeps its detail: FORMAT now reads as its fixed message. */
    CHECK(strcmp(message(PORTCULLIS_RESULT_POLICY_FORMAT, msg, sizeof msg),
                 "the policy is not valid TOML or not the shape of a policy") == 0, "%s", msg);

    /* Truncation at a character boundary, always NUL-terminated. */
    char small[8];
    portcullis_error(PORTCULLIS_RESULT_POLICY_INVALID, small, sizeof small, &n);
    CHECK(n == 7 && strcmp(small, "p.toml:") == 0, "truncated to %zu: %s", n, small);
    char one[1] = {'x'};
    portcullis_error(PORTCULLIS_RESULT_OK, one, 1, &n);
    CHECK(one[0] == 0 && n == 0, "a one-byte buffer holds the NUL only");
    n = 99;
    portcullis_error(PORTCULLIS_RESULT_OK, NULL, 0, &n);
    CHECK(n == 99, "a NULL buffer writes nothing");
    CHECK(strcmp(message(4242, msg, sizeof msg), "unknown result code 4242") == 0, "%s", msg);
    CHECK(strcmp(message(PORTCULLIS_RESULT_NULL_PARAMETER, msg, sizeof msg),
                 "a required pointer argument was NULL") == 0, "%s", msg);
    CHECK(portcullis_error_location(PORTCULLIS_RESULT_NULL_PARAMETER, &line, &column) ==
              PORTCULLIS_RESULT_INVALID_PARAMETER, "a failure without a place has no location");
    r = portcullis_engine_new(S(invalid), S("p.toml"), NULL, 0, &engine);
    line = 77;
    CHECK(portcullis_error_location(r, &line, NULL) == PORTCULLIS_RESULT_NULL_PARAMETER && line == 77,
          "one NULL out-pointer: nothing written");

    /* Asking where a failure was never replaces it, even when the question fails. */
    r = portcullis_engine_new(S(bad), S("bad.toml"), NULL, 0, &engine);
    CHECK(portcullis_error_location(PORTCULLIS_RESULT_INVALID_UTF8, &line, &column) ==
              PORTCULLIS_RESULT_INVALID_PARAMETER, "no INVALID_UTF8 failure to locate");
    CHECK(portcullis_error_location(r, NULL, NULL) == PORTCULLIS_RESULT_NULL_PARAMETER, "NULL out-pointers");
    CHECK(strncmp(message(r, msg, sizeof msg), "bad.toml:4:1:", 13) == 0, "the detail survived: %s", msg);
    CHECK(strcmp(message(PORTCULLIS_RESULT_INVALID_PARAMETER, msg, sizeof msg), "an argument is out of range") == 0,
          "error_location recorded its own failure: %s", msg);

    /* A message is cut at a character boundary, never inside one. */
    r = portcullis_engine_new(S(bad), S("pol\xc3\xa9.toml"), NULL, 0, &engine);
    char cut[5];
    portcullis_error(r, cut, sizeof cut, &n);
    CHECK(n == 3 && strcmp(cut, "pol") == 0, "cut to %zu bytes: %s", n, cut);
    portcullis_error(r, cut, 6, &n);
    CHECK(n == 5 && memcmp(cut, "pol\xc3\xa9", 5) == 0, "the whole character fits: %zu", n);

    /* Lengths and counts whose bytes exceed PTRDIFF_MAX. */
    portcullis_identity *someone = identity_from("{\"subject\":\"a\"}");
    portcullis_engine *empty = engine_from(S("version = 1\n"));
    portcullis_decision *none_d = (portcullis_decision *)&checks;
    CHECK(portcullis_decide(empty, someone, NULL, "x", SIZE_MAX, &none_d) == PORTCULLIS_RESULT_INVALID_PARAMETER &&
              none_d == (portcullis_decision *)&checks, "an SQL length of SIZE_MAX");
    portcullis_decision *ok_d = NULL;
    CHECK(portcullis_decide(empty, someone, NULL, S("SELECT 1"), &ok_d) == PORTCULLIS_RESULT_OK, "decide");
    portcullis_masker *no_m = (portcullis_masker *)&checks;
    portcullis_column single = {S("c"), NULL, 0, 25, 0};
    CHECK(portcullis_masker_new(empty, someone, ok_d, 0, &single, SIZE_MAX / 8, &no_m) ==
              PORTCULLIS_RESULT_INVALID_PARAMETER && no_m == (portcullis_masker *)&checks, "a huge column count");
    portcullis_decision_free(ok_d);
    portcullis_engine_free(empty);
    portcullis_identity_free(someone);

    /* NULL handles, NULL text with a length, NULL out-pointers. */
    portcullis_decision *d = (portcullis_decision *)&checks;
    portcullis_identity *who = identity_from("{\"subject\":\"a\"}");
    CHECK(portcullis_decide(NULL, who, NULL, S("SELECT 1"), &d) == PORTCULLIS_RESULT_NULL_PARAMETER, "NULL engine");
    CHECK(d == (portcullis_decision *)&checks, "the out-pointer was written on failure");
    CHECK(portcullis_engine_new(NULL, 10, NULL, 0, NULL, 0, &engine) == PORTCULLIS_RESULT_NULL_PARAMETER,
          "NULL text with a length");
    CHECK(portcullis_engine_new(S(bad), NULL, 0, NULL, 0, NULL) == PORTCULLIS_RESULT_NULL_PARAMETER,
          "NULL out-pointer");
    CHECK(portcullis_identity_new(S("{\"subject\":\"a\"}"), NULL) == PORTCULLIS_RESULT_NULL_PARAMETER, "NULL out");

    /* Text that is not UTF-8. */
    const char latin1[] = "SELECT '\xe9t\xe9'";
    portcullis_engine *e = engine_from(S("version = 1\n"));
    r = portcullis_decide(e, who, NULL, S(latin1), &d);
    CHECK(r == PORTCULLIS_RESULT_INVALID_UTF8, "got %u", (unsigned)r);
    CHECK(strcmp(message(r, msg, sizeof msg), "the SQL is not valid UTF-8 (at byte 8)") == 0, "%s", msg);
    CHECK(portcullis_engine_new(S("version = 1\n# \xff\n"), NULL, 0, NULL, 0, &engine) ==
              PORTCULLIS_RESULT_INVALID_UTF8, "a policy that is not UTF-8");

    /* Identity JSON is read strictly. */
    portcullis_identity *nobody = (portcullis_identity *)&checks;
    r = portcullis_identity_new(S("{\"subject\":\"a\",\"group\":[\"dba\"]}"), &nobody);
    CHECK(r == PORTCULLIS_RESULT_IDENTITY_JSON && nobody == (portcullis_identity *)&checks, "a misspelt field is refused");
    CHECK(strstr(message(r, msg, sizeof msg), "unknown field `group`") != NULL, "%s", msg);

    /* Accessors of a NULL decision fail closed. */
    CHECK(portcullis_decision_verdict(NULL) == PORTCULLIS_VERDICT_DENY, "NULL decision reads as deny");
    CHECK(portcullis_decision_rule(NULL).data == NULL && portcullis_decision_json(NULL).data == NULL, "NULL strings");
    CHECK(portcullis_decision_max_rows(NULL) == 0 && portcullis_decision_statement_count(NULL) == 0, "zeros");
    CHECK(!portcullis_masker_is_noop(NULL), "a NULL masker is not a no-op");

    /* Freeing NULL is allowed. */
    portcullis_engine_free(NULL);
    portcullis_identity_free(NULL);
    portcullis_session_free(NULL);
    portcullis_decision_free(NULL);
    portcullis_masker_free(NULL);
    portcullis_jwks_free(NULL);

    portcullis_engine_free(e);
    portcullis_identity_free(who);
    CHECK(strncmp(portcullis_version(), "portcullis-ffi/", 15) == 0, "version %s", portcullis_version());
}

static void test_decisions(const char *policy, size_t policy_len) {
    portcullis_engine *e = engine_from(policy, policy_len);
    portcullis_identity *agent =
        identity_from("{\"subject\":\"alice@example.com\",\"groups\":[\"ai-agents\"],\"actor\":\"copilot-7\"}");
    portcullis_decision *d = NULL;

    CHECK(portcullis_decide(e, agent, NULL, S("SELECT id, total FROM orders WHERE customer_id = 42"), &d) ==
              PORTCULLIS_RESULT_OK, "decide");
    CHECK(portcullis_decision_verdict(d) == PORTCULLIS_VERDICT_ALLOW, "a read is allowed");
    CHECK(str_is(portcullis_decision_rule(d), "agents-read"), "rule");
    CHECK(str_is(portcullis_decision_reason(d), "agents may read application tables"), "reason");
    CHECK(portcullis_decision_max_rows(d) == 1000, "max_rows %llu", (unsigned long long)portcullis_decision_max_rows(d));
    CHECK(portcullis_decision_statement_count(d) == 1, "one statement");
    portcullis_str json = portcullis_decision_json(d);
    CHECK(str_has(json, "\"verdict\":\"allow\"") && str_has(json, "\"actor\":\"copilot-7\"") &&
              str_has(json, "public.orders"), "json: %.*s", (int)json.len, json.data);
    CHECK(portcullis_decision_json(d).data == json.data, "the JSON is built once");
    portcullis_decision_free(d);

    CHECK(verdict_of(e, agent, NULL, S("DROP TABLE orders")) == PORTCULLIS_VERDICT_DENY, "DDL is denied");
    CHECK(verdict_of(e, agent, NULL, S("DELETE FROM orders WHERE id = 7")) == PORTCULLIS_VERDICT_REQUIRE_APPROVAL,
          "an agent's delete needs approval");
    CHECK(verdict_of(e, agent, NULL, S("SELECT * FROM orders; SELECT api_key FROM secrets")) ==
              PORTCULLIS_VERDICT_DENY, "one forbidden statement denies the text");
    /* A NUL byte is part of the text the engine judges; it is not a terminator. */
    CHECK(verdict_of(e, agent, NULL, S("SELECT 1\0; DROP TABLE orders")) == PORTCULLIS_VERDICT_DENY,
          "a NUL inside the SQL is denied");
    CHECK(verdict_of(e, agent, NULL, S("SELEC * FROM orders")) == PORTCULLIS_VERDICT_DENY, "unparsable is denied");

    /* Sessions: search_path, standard_conforming_strings, prepared statements, apply. */
    portcullis_session *s = NULL;
    CHECK(portcullis_session_new(e, &s) == PORTCULLIS_RESULT_OK, "session");
    CHECK(verdict_of(e, agent, s, S("SELECT * FROM orders")) == PORTCULLIS_VERDICT_ALLOW, "public.orders");
    CHECK(portcullis_session_set_search_path(s, S("secret_schema")) == PORTCULLIS_RESULT_OK, "set search_path");
    CHECK(verdict_of(e, agent, s, S("SELECT * FROM orders")) == PORTCULLIS_VERDICT_DENY,
          "orders resolves to secret_schema.orders");
    CHECK(portcullis_session_set_search_path(s, S("\"unterminated")) == PORTCULLIS_RESULT_INVALID_PARAMETER,
          "a search_path that does not parse");
    CHECK(verdict_of(e, agent, s, S("SELECT * FROM orders")) == PORTCULLIS_VERDICT_DENY,
          "a refused setting changes nothing");
    CHECK(portcullis_decide(e, agent, s, S("SET search_path = public"), &d) == PORTCULLIS_RESULT_OK, "SET");
    CHECK(portcullis_decision_verdict(d) == PORTCULLIS_VERDICT_ALLOW, "SET is allowed");
    CHECK(portcullis_session_apply(s, d) == PORTCULLIS_RESULT_OK, "apply");
    portcullis_decision_free(d);
    CHECK(verdict_of(e, agent, s, S("SELECT * FROM orders")) == PORTCULLIS_VERDICT_ALLOW, "after SET public");
    CHECK(portcullis_decide(e, agent, s, S("RESET search_path"), &d) == PORTCULLIS_RESULT_OK, "RESET");
    CHECK(portcullis_session_apply(s, d) == PORTCULLIS_RESULT_OK, "apply RESET");
    portcullis_decision_free(d);
    CHECK(verdict_of(e, agent, s, S("SELECT * FROM orders")) == PORTCULLIS_VERDICT_DENY,
          "RESET returns to the path the session was given");

    const char escaped[] = "SELECT 'x\\' ; DROP TABLE orders; --'";
    CHECK(verdict_of(e, agent, NULL, S(escaped)) == PORTCULLIS_VERDICT_DENY, "with scs on, a DROP follows");
    portcullis_session *old = NULL;
    CHECK(portcullis_session_new(e, &old) == PORTCULLIS_RESULT_OK, "session");
    CHECK(portcullis_session_set_standard_conforming_strings(old, false) == PORTCULLIS_RESULT_OK, "scs off");
    CHECK(verdict_of(e, agent, old, S(escaped)) == PORTCULLIS_VERDICT_ALLOW, "with scs off, one string");
    CHECK(portcullis_session_add_prepared(old, S("p"), S("SELECT api_key FROM secrets")) == PORTCULLIS_RESULT_OK,
          "prepare");
    CHECK(verdict_of(e, agent, old, S("EXECUTE p")) == PORTCULLIS_VERDICT_DENY, "EXECUTE is judged by its SQL");
    /* PREPARE and DEALLOCATE reach the session through apply. */
    CHECK(portcullis_decide(e, agent, old, S("PREPARE q AS SELECT id FROM orders"), &d) == PORTCULLIS_RESULT_OK, "decide");
    CHECK(portcullis_decision_verdict(d) == PORTCULLIS_VERDICT_ALLOW && portcullis_session_apply(old, d) == 0, "PREPARE");
    portcullis_decision_free(d);
    CHECK(verdict_of(e, agent, old, S("EXECUTE q")) == PORTCULLIS_VERDICT_ALLOW, "EXECUTE of a known statement");
    CHECK(portcullis_decide(e, agent, old, S("DEALLOCATE q"), &d) == PORTCULLIS_RESULT_OK, "decide");
    CHECK(portcullis_session_apply(old, d) == PORTCULLIS_RESULT_OK, "DEALLOCATE");
    portcullis_decision_free(d);
    CHECK(verdict_of(e, agent, old, S("EXECUTE q")) == PORTCULLIS_VERDICT_DENY, "EXECUTE of an unknown statement");
    CHECK(portcullis_session_apply(old, NULL) == PORTCULLIS_RESULT_NULL_PARAMETER, "NULL decision");
    CHECK(portcullis_session_set_user(old, S("app")) == PORTCULLIS_RESULT_OK, "user");
    CHECK(portcullis_session_set_user(NULL, S("app")) == PORTCULLIS_RESULT_NULL_PARAMETER, "NULL session");
    portcullis_session_free(old);
    portcullis_session_free(s);
    portcullis_identity_free(agent);
    portcullis_engine_free(e);
}

static void test_masking(const char *policy, size_t policy_len) {
    portcullis_engine *e = engine_from(policy, policy_len);
    portcullis_identity *agent =
        identity_from("{\"subject\":\"alice@example.com\",\"groups\":[\"ai-agents\"],\"actor\":\"copilot-7\"}");
    portcullis_decision *d = NULL;
    CHECK(portcullis_decide(e, agent, NULL, S("SELECT id, name, email, ssn, note FROM customers"), &d) ==
              PORTCULLIS_RESULT_OK, "decide");
    portcullis_column cols[5] = {
        {S("id"), S("public.customers.id"), 23, false},
        {S("name"), S("public.customers.name"), 25, false},
        {S("email"), S("public.customers.email"), 25, false},
        {S("ssn"), S("public.customers.ssn"), 25, false},
        {S("note"), NULL, 0, 25, false},
    };
    portcullis_masker *m = (portcullis_masker *)&checks;
    CHECK(portcullis_masker_new(e, agent, d, 1, cols, 5, &m) == PORTCULLIS_RESULT_INVALID_PARAMETER,
          "statement 1 of 1 is out of range");
    CHECK(m == (portcullis_masker *)&checks, "the out-pointer was written on failure");
    CHECK(portcullis_masker_new(e, agent, d, 0, NULL, 5, &m) == PORTCULLIS_RESULT_NULL_PARAMETER, "NULL columns");
    portcullis_column latin1 = {S("\xe9"), NULL, 0, 25, false};
    portcullis_result r = portcullis_masker_new(e, agent, d, 0, &latin1, 1, &m);
    CHECK(r == PORTCULLIS_RESULT_INVALID_UTF8, "a column name that is not UTF-8: %u", (unsigned)r);
    char why[128];
    CHECK(strcmp(message(r, why, sizeof why), "column 0: its name is not valid UTF-8 (at byte 0)") == 0, "%s", why);
    m = NULL;
    CHECK(portcullis_masker_new(e, agent, d, 0, cols, 5, &m) == PORTCULLIS_RESULT_OK, "masker");
    CHECK(!portcullis_masker_is_noop(m), "masks apply");
    CHECK(!portcullis_masker_retyped(m, 2) && !portcullis_masker_retyped(m, 3), "text columns keep their type");

    static const char note[] = "card on file: 4012888888881881";
    portcullis_cell row[5] = {
        {(const uint8_t *)"1", 1, false},
        {(const uint8_t *)"Alice Martin", 12, false},
        {(const uint8_t *)"alice@example.com", 17, false},
        {(const uint8_t *)"123-45-6789", 11, false},
        {(const uint8_t *)note, sizeof note - 1, false},
    };
    portcullis_cell before[5];
    memcpy(before, row, sizeof row);
    uint8_t tiny[8];
    size_t used = 12345, changed = 12345;
    r = portcullis_mask_row(m, row, 5, tiny, sizeof tiny, &used, &changed);
    CHECK(r == PORTCULLIS_RESULT_INSUFFICIENT_SIZE, "got %u", (unsigned)r);
    int same = 1;
    for (int i = 0; i < 5; i++)
        same &= row[i].data == before[i].data && row[i].len == before[i].len && row[i].is_null == before[i].is_null;
    CHECK(same && used == 12345 && changed == 12345, "nothing changed on failure");
    char msg[256];
    CHECK(strstr(message(r, msg, sizeof msg), "need 46 bytes") != NULL, "%s", msg);
    CHECK(portcullis_mask_row(m, row, 4, tiny, sizeof tiny, &used, &changed) == PORTCULLIS_RESULT_INVALID_PARAMETER,
          "a row with the wrong number of values");

    uint8_t buf[256];
    memset(buf, 0xAA, sizeof buf);
    CHECK(portcullis_mask_row(m, row, 5, buf, sizeof buf, &used, &changed) == PORTCULLIS_RESULT_OK, "mask");
    CHECK(changed == 3 && used == 46, "changed %zu, used %zu", changed, used);
    CHECK(row[0].data == before[0].data && row[1].data == before[1].data, "untouched cells keep their bytes");
    CHECK(row[2].len == 16 && memcmp(row[2].data, "****@example.com", 16) == 0, "email: %.*s", (int)row[2].len,
          (const char *)row[2].data);
    CHECK(row[3].len == 8 && memcmp(row[3].data, "****6789", 8) == 0, "ssn: %.*s", (int)row[3].len,
          (const char *)row[3].data);
    CHECK(row[4].len == 22 && memcmp(row[4].data, "card on file: ****1881", 22) == 0,
          "note: %.*s", (int)row[4].len, (const char *)row[4].data);
    CHECK(row[2].data >= buf && row[4].data + row[4].len <= buf + used, "masked values are in the buffer");
    CHECK(strcmp(note, "card on file: 4012888888881881") == 0, "the caller's bytes were not written");
    CHECK(strstr(message(PORTCULLIS_RESULT_INSUFFICIENT_SIZE, msg, sizeof msg), "alice") == NULL &&
              strstr(msg, "6789") == NULL, "no value in a message: %s", msg);

    /* Masking again into the buffer the cells now point into is refused. */
    r = portcullis_mask_row(m, row, 5, buf, sizeof buf, &used, &changed);
    CHECK(r == PORTCULLIS_RESULT_INVALID_PARAMETER, "a value inside the output buffer: %u", (unsigned)r);

    /* NULL where bytes are needed, NULL cells, a NULL value with a length. */
    memcpy(row, before, sizeof row);
    CHECK(portcullis_mask_row(m, row, 5, NULL, 0, &used, &changed) == PORTCULLIS_RESULT_NULL_PARAMETER,
          "a NULL buffer where bytes are needed");
    CHECK(row[2].data == before[2].data, "nothing changed");
    CHECK(portcullis_mask_row(m, NULL, 5, buf, sizeof buf, &used, &changed) == PORTCULLIS_RESULT_NULL_PARAMETER,
          "NULL cells");
    row[1].data = NULL;
    CHECK(portcullis_mask_row(m, row, 5, buf, sizeof buf, &used, &changed) == PORTCULLIS_RESULT_NULL_PARAMETER,
          "a NULL value with a length");
    /* Any nonzero is_null is NULL: the value is not read. */
    memcpy(row, before, sizeof row);
    row[3].is_null = 2;
    row[3].data = NULL;
    CHECK(portcullis_mask_row(m, row, 5, buf, sizeof buf, &used, &changed) == PORTCULLIS_RESULT_OK && changed == 2,
          "is_null 2 is NULL: %zu changed", changed);
    CHECK(row[3].is_null == 2 && row[3].data == NULL, "a NULL cell is left alone");
    portcullis_masker_free(m);

    /* A masked column whose type is not text is described to the client as text. */
    cols[3].type_oid = 20;
    cols[3].binary = true;
    CHECK(portcullis_masker_new(e, agent, d, 0, cols, 5, &m) == PORTCULLIS_RESULT_OK, "masker");
    CHECK(portcullis_masker_retyped(m, 3) && !portcullis_masker_retyped(m, 0) && !portcullis_masker_retyped(m, 99),
          "only the masked bigint column is retyped");
    portcullis_masker_free(m);
    portcullis_decision_free(d);

    /* A mask to NULL sets is_null; an identity nothing applies to gets a no-op masker. */
    const char nulling[] =
        "version = 1\n[[rule]]\nname = \"r\"\neffect = \"allow\"\nclasses = [\"read\"]\n"
        "[[mask]]\nname = \"hide\"\ncolumns = [\"public.t.secret\"]\nstrategy = \"null\"\nexempt_groups = [\"hr\"]\n"
        "[[mask]]\nname = \"blank\"\ncolumns = [\"public.t.blank\"]\nstrategy = \"fixed\"\nvalue = \"\"\n";
    portcullis_engine *e2 = engine_from(S(nulling));
    portcullis_identity *hr = identity_from("{\"subject\":\"bob\",\"groups\":[\"hr\"]}");
    CHECK(portcullis_decide(e2, agent, NULL, S("SELECT secret FROM t"), &d) == PORTCULLIS_RESULT_OK, "decide");
    portcullis_column col = {S("secret"), S("public.t.secret"), 25, false};
    CHECK(portcullis_masker_new(e2, agent, d, 0, &col, 1, &m) == PORTCULLIS_RESULT_OK, "masker");
    portcullis_cell cell = {(const uint8_t *)"s3cret", 6, false};
    CHECK(portcullis_mask_row(m, &cell, 1, NULL, 0, &used, &changed) == PORTCULLIS_RESULT_OK, "NULL needs no bytes");
    CHECK(cell.is_null && cell.data == NULL && cell.len == 0 && changed == 1 && used == 0, "masked to NULL");
    portcullis_masker_free(m);
    /* A mask to an empty text needs no byte either: a non-NULL pointer of length 0. */
    portcullis_column blank = {S("blank"), S("public.t.blank"), 25, 0};
    CHECK(portcullis_masker_new(e2, agent, d, 0, &blank, 1, &m) == PORTCULLIS_RESULT_OK, "masker");
    cell = (portcullis_cell){(const uint8_t *)"s3cret", 6, 0};
    CHECK(portcullis_mask_row(m, &cell, 1, NULL, 0, &used, &changed) == PORTCULLIS_RESULT_OK, "an empty value");
    CHECK(!cell.is_null && cell.data != NULL && cell.len == 0 && changed == 1 && used == 0, "masked to ''");
    portcullis_masker_free(m);
    CHECK(portcullis_masker_new(e2, hr, d, 0, &col, 1, &m) == PORTCULLIS_RESULT_OK, "masker");
    CHECK(portcullis_masker_is_noop(m), "an exempt group sees the value");
    cell = (portcullis_cell){(const uint8_t *)"s3cret", 6, 0};
    used = changed = 99;
    CHECK(portcullis_mask_row(m, &cell, 1, NULL, 0, &used, &changed) == PORTCULLIS_RESULT_OK && used == 0 &&
              changed == 0 && cell.len == 6 && memcmp(cell.data, "s3cret", 6) == 0,
          "a no-op masker leaves the row as it is");
    portcullis_masker_free(m);
    portcullis_decision_free(d);
    portcullis_identity_free(hr);
    portcullis_engine_free(e2);
    portcullis_identity_free(agent);
    portcullis_engine_free(e);
}

/* The `hash` strategy needs the key given with the policy; equal keys give equal pseudonyms. */
static void test_keys(void) {
    const char policy[] =
        "version = 1\n[[rule]]\nname = \"r\"\neffect = \"allow\"\nclasses = [\"read\"]\n"
        "[[mask]]\nname = \"pseudonym\"\ncolumns = [\"public.t.email\"]\nstrategy = \"hash\"\n";
    char msg[512];
    portcullis_engine *none = (portcullis_engine *)&checks;
    portcullis_result r = portcullis_engine_new(S(policy), S("keys.toml"), NULL, 0, &none);
    CHECK(r == PORTCULLIS_RESULT_POLICY_KEYS && none == (portcullis_engine *)&checks, "no key: %u", (unsigned)r);
    CHECK(strcmp(message(r, msg, sizeof msg),
                 "keys.toml:6:1: mask `pseudonym` uses strategy \"hash\", which needs a pseudonymisation key") == 0,
          "%s", msg);
    size_t line = 0, column = 0;
    CHECK(portcullis_error_location(r, &line, &column) == PORTCULLIS_RESULT_OK && line == 6 && column == 1,
          "the mask's place: %zu:%zu", line, column);

    const uint8_t *keys[3] = {(const uint8_t *)"key-one", (const uint8_t *)"key-one", (const uint8_t *)"key-two"};
    char out[3][128];
    portcullis_identity *who = identity_from("{\"subject\":\"a\"}");
    for (int i = 0; i < 3; i++) {
        portcullis_engine *e = NULL;
        CHECK(portcullis_engine_new(S(policy), S("keys.toml"), keys[i], 7, &e) == PORTCULLIS_RESULT_OK, "engine %d", i);
        portcullis_decision *d = NULL;
        portcullis_masker *m = NULL;
        portcullis_column col = {S("email"), S("public.t.email"), 25, false};
        portcullis_cell cell = {(const uint8_t *)"ann@example.com", 15, false};
        uint8_t buf[128];
        size_t used = 0, changed = 0;
        CHECK(portcullis_decide(e, who, NULL, S("SELECT email FROM t"), &d) == PORTCULLIS_RESULT_OK, "decide");
        CHECK(portcullis_masker_new(e, who, d, 0, &col, 1, &m) == PORTCULLIS_RESULT_OK, "masker");
        CHECK(portcullis_mask_row(m, &cell, 1, buf, sizeof buf, &used, &changed) == PORTCULLIS_RESULT_OK, "mask");
        snprintf(out[i], sizeof out[i], "%.*s", (int)cell.len, (const char *)cell.data);
        CHECK(changed == 1 && strstr(out[i], "ann") == NULL, "pseudonym %s", out[i]);
        portcullis_masker_free(m);
        portcullis_decision_free(d);
        portcullis_engine_free(e);
    }
    CHECK(strcmp(out[0], out[1]) == 0 && strcmp(out[0], out[2]) != 0, "pseudonyms %s %s %s", out[0], out[1], out[2]);
    portcullis_identity_free(who);
}

static void test_tokens(const char *policy, size_t policy_len, const char *jwks_text, size_t jwks_len,
                        char *token, size_t token_len) {
    portcullis_engine *e = engine_from(policy, policy_len);
    portcullis_jwks *jwks = NULL;
    char msg[512];
    CHECK(portcullis_jwks_new((const uint8_t *)jwks_text, jwks_len, &jwks) == PORTCULLIS_RESULT_OK, "jwks");
    CHECK(portcullis_jwks_key_count(jwks) == 1, "one key");
    portcullis_jwks *none = (portcullis_jwks *)&checks;
    portcullis_result r = portcullis_jwks_new((const uint8_t *)"{}", 2, &none);
    CHECK(r == PORTCULLIS_RESULT_JWKS_INVALID && none == (portcullis_jwks *)&checks, "not a key set: %u", (unsigned)r);
    CHECK(strstr(message(r, msg, sizeof msg), "no `keys` array") != NULL, "%s", msg);

    uint64_t now = (uint64_t)time(NULL);
    portcullis_identity *who = NULL;
    r = portcullis_verify_jwt(e, jwks, token, token_len, now, &who);
    CHECK(r == PORTCULLIS_RESULT_OK, "a good token: %s", message(r, msg, sizeof msg));
    CHECK(str_is(portcullis_identity_subject(who), "alice@example.com"), "subject");
    portcullis_str json = portcullis_identity_json(who);
    CHECK(str_has(json, "\"groups\":[\"ai-agents\"]") && str_has(json, "copilot-7"), "identity %.*s",
          (int)json.len, json.data);
    CHECK(verdict_of(e, who, NULL, S("DELETE FROM orders WHERE id = 7")) == PORTCULLIS_VERDICT_REQUIRE_APPROVAL,
          "the token's actor makes the delete need approval");
    portcullis_identity_free(who);

    portcullis_identity *sentinel = (portcullis_identity *)&checks;
    who = sentinel;
    r = portcullis_verify_jwt(e, jwks, token, token_len, now + 86400, &who);
    CHECK(r == PORTCULLIS_RESULT_TOKEN_EXPIRED && who == sentinel, "expired: %u", (unsigned)r);
    CHECK(strcmp(message(r, msg, sizeof msg), "token expired") == 0, "%s", msg);
    /* Flip one character of the signature. */
    token[token_len - 2] = token[token_len - 2] == 'A' ? 'B' : 'A';
    r = portcullis_verify_jwt(e, jwks, token, token_len, now, &who);
    CHECK(r == PORTCULLIS_RESULT_TOKEN_BAD_SIGNATURE && who == sentinel, "tampered: %u", (unsigned)r);
    CHECK(strstr(message(r, msg, sizeof msg), token) == NULL, "no message holds the token");
    r = portcullis_verify_jwt(e, jwks, S("not.a.token"), now, &who);
    CHECK(r == PORTCULLIS_RESULT_TOKEN_MALFORMED, "malformed: %u", (unsigned)r);
    r = portcullis_verify_jwt(e, jwks, S("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."), now, &who);
    CHECK(r == PORTCULLIS_RESULT_TOKEN_UNSIGNED, "alg none: %u (%s)", (unsigned)r, message(r, msg, sizeof msg));
    CHECK(portcullis_verify_jwt(e, NULL, token, token_len, now, &who) == PORTCULLIS_RESULT_NULL_PARAMETER, "NULL jwks");
    portcullis_jwks_free(jwks);
    portcullis_engine_free(e);
}

/* Threads: one engine, one identity and one session shared; per-thread error detail. */
struct shared {
    const portcullis_engine *engine;
    const portcullis_identity *agent;
    const portcullis_session *session;
    const portcullis_decision *decision;
    const portcullis_masker *masker;
    int index;
    int wrong;
};

static void *worker(void *arg) {
    struct shared *w = arg;
    static const char *const sql[4] = {"SELECT * FROM orders WHERE id = 1", "DROP TABLE orders",
                                       "DELETE FROM orders WHERE id = 2", "SELECT api_key FROM secrets"};
    static const portcullis_verdict want[4] = {PORTCULLIS_VERDICT_ALLOW, PORTCULLIS_VERDICT_DENY,
                                               PORTCULLIS_VERDICT_REQUIRE_APPROVAL, PORTCULLIS_VERDICT_DENY};
    for (int i = 0; i < 200; i++) {
        int k = (i + w->index) % 4;
        if (verdict_of(w->engine, w->agent, w->session, sql[k], strlen(sql[k])) != want[k]) w->wrong++;
        /* The shared decision and masker, read at once by every thread. */
        portcullis_cell cell[2] = {{(const uint8_t *)"Ann", 3, 0}, {(const uint8_t *)"123-45-6789", 11, 0}};
        uint8_t buf[64];
        size_t used = 0, changed = 0;
        if (portcullis_mask_row(w->masker, cell, 2, buf, sizeof buf, &used, &changed) != PORTCULLIS_RESULT_OK ||
            changed != 1 || cell[1].len != 8 || memcmp(cell[1].data, "****6789", 8) != 0)
            w->wrong++;
        if (!str_has(portcullis_decision_json(w->decision), "public.customers")) w->wrong++;
    }
    /* This thread's failure detail is its own. */
    char name[32], msg[256];
    snprintf(name, sizeof name, "thread-%d.toml", w->index);
    portcullis_engine *e = NULL;
    portcullis_result r = portcullis_engine_new(S("version = 2\n"), name, strlen(name), NULL, 0, &e);
    if (r == PORTCULLIS_RESULT_OK || strncmp(message(r, msg, sizeof msg), name, strlen(name)) != 0) w->wrong++;
    return NULL;
}

static void test_threads(const char *policy, size_t policy_len) {
    portcullis_engine *e = engine_from(policy, policy_len);
    portcullis_identity *agent =
        identity_from("{\"subject\":\"alice@example.com\",\"groups\":[\"ai-agents\"],\"actor\":\"copilot-7\"}");
    portcullis_session *s = NULL;
    portcullis_session_new(e, &s);
    char msg[256];
    portcullis_engine *bad = NULL;
    portcullis_result r = portcullis_engine_new(S("version = 2\n"), S("main.toml"), NULL, 0, &bad);
    portcullis_decision *d = NULL;
    portcullis_masker *m = NULL;
    portcullis_column cols[2] = {{S("name"), S("public.customers.name"), 25, 0},
                                 {S("ssn"), S("public.customers.ssn"), 25, 0}};
    CHECK(portcullis_decide(e, agent, s, S("SELECT name, ssn FROM customers"), &d) == PORTCULLIS_RESULT_OK, "decide");
    CHECK(portcullis_masker_new(e, agent, d, 0, cols, 2, &m) == PORTCULLIS_RESULT_OK, "masker");
    enum { N = 4 };
    pthread_t threads[N];
    struct shared work[N];
    for (int i = 0; i < N; i++) {
        work[i] = (struct shared){e, agent, s, d, m, i, 0};
        CHECK(pthread_create(&threads[i], NULL, worker, &work[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < N; i++) {
        pthread_join(threads[i], NULL);
        CHECK(work[i].wrong == 0, "thread %d: %d wrong answers", i, work[i].wrong);
    }
    CHECK(strncmp(message(r, msg, sizeof msg), "main.toml", 9) == 0, "the main thread's detail: %s", msg);
    portcullis_masker_free(m);
    portcullis_decision_free(d);
    portcullis_session_free(s);
    portcullis_identity_free(agent);
    portcullis_engine_free(e);
}

/* Views: without them a view is judged by its name; with them, by what it
   reads; views that could not be read refuse what names a relation. */
static void test_views(const char *policy, size_t policy_len) {
    portcullis_engine *e = engine_from(policy, policy_len);
    portcullis_identity *agent = identity_from("{\"subject\":\"alice@example.com\",\"groups\":[\"ai-agents\"]}");
    portcullis_session *s = NULL;
    CHECK(portcullis_session_new(e, &s) == PORTCULLIS_RESULT_OK, "session");
    CHECK(verdict_of(e, agent, s, S("SELECT * FROM leak")) == PORTCULLIS_VERDICT_ALLOW, "by name without views");

    const char json[] = "{\"views\":[{\"schema\":\"public\",\"name\":\"leak\",\"columns\":[\"api_key\"],"
                        "\"definition\":\" SELECT secrets.api_key FROM public.secrets;\"},"
                        "{\"schema\":\"public\",\"name\":\"totals\",\"kind\":\"materialized\","
                        "\"columns\":[\"t\"],\"definition\":\" SELECT sum(orders.total) AS t FROM public.orders;\"}],"
                        "\"functions\":[{\"schema\":\"public\",\"name\":\"key\",\"language\":\"sql\","
                        "\"body\":\"SELECT api_key FROM secrets\"},"
                        "{\"schema\":\"public\",\"name\":\"n\",\"language\":\"sql\",\"body\":\"SELECT count(*) FROM orders\"},"
                        "{\"schema\":\"public\",\"name\":\"pl\",\"language\":\"plpgsql\"}],"
                        "\"row_policies\":[{\"schema\":\"public\",\"name\":\"notes\","
                        "\"using\":\"(author IN ( SELECT secrets.owner FROM public.secrets))\"}],"
                        "\"rules\":[{\"schema\":\"public\",\"name\":\"drafts\",\"definition\":"
                        "\"CREATE RULE r AS ON INSERT TO public.drafts DO INSTEAD INSERT INTO public.secrets VALUES (new.id);\"}],"
                        "\"triggers\":[{\"schema\":\"public\",\"name\":\"stamped\",\"function_schema\":\"public\","
                        "\"function\":\"stamp\"}],"
                        "\"catalog_relations\":[\"shadow\"]}";
    portcullis_definitions *v = NULL;
    CHECK(portcullis_definitions_new(S(json), &v) == PORTCULLIS_RESULT_OK, "views");
    CHECK(portcullis_definitions_count(v) == 2, "two views");
    CHECK(portcullis_session_set_definitions(s, v) == PORTCULLIS_RESULT_OK, "set views");
    portcullis_definitions_free(v); /* the session keeps its own reference */
    CHECK(verdict_of(e, agent, s, S("SELECT * FROM leak")) == PORTCULLIS_VERDICT_DENY, "judged by public.secrets");
    CHECK(verdict_of(e, agent, s, S("SELECT t FROM totals")) == PORTCULLIS_VERDICT_ALLOW, "a view over orders");
    CHECK(verdict_of(e, agent, s, S("SELECT key()")) == PORTCULLIS_VERDICT_DENY, "a function reading public.secrets");
    CHECK(verdict_of(e, agent, s, S("SELECT n()")) == PORTCULLIS_VERDICT_ALLOW, "a function reading orders");
    CHECK(verdict_of(e, agent, s, S("SELECT pl()")) == PORTCULLIS_VERDICT_DENY, "plpgsql stays opaque");
    CHECK(verdict_of(e, agent, s, S("SELECT * FROM notes")) == PORTCULLIS_VERDICT_DENY,
          "a row security policy reading public.secrets");
    CHECK(verdict_of(e, agent, s, S("SELECT * FROM drafts")) == PORTCULLIS_VERDICT_ALLOW, "rules run on writes only");
    CHECK(decision_has(e, agent, s, S("INSERT INTO drafts VALUES (1)"), "\"written_tables\":[\"public.drafts\",\"public.secrets\"]"),
          "a rule writing public.secrets");
    CHECK(verdict_of(e, agent, s, S("SELECT * FROM shadow")) == PORTCULLIS_VERDICT_DENY,
          "pg_catalog holds a relation named shadow");
    CHECK(verdict_of(e, agent, s, S("SELECT * FROM stamped")) == PORTCULLIS_VERDICT_ALLOW, "triggers fire on writes");
    CHECK(decision_has(e, agent, s, S("DELETE FROM stamped WHERE id = 1"), "\"opaque\":true") &&
              decision_has(e, agent, s, S("DELETE FROM stamped WHERE id = 1"), "runs public.stamp"),
          "a trigger running plpgsql");

    portcullis_definitions *bad = (portcullis_definitions *)&s;
    CHECK(portcullis_definitions_new(S("{\"views\":[{\"schema\":\"public\",\"nmae\":\"v\"}]}"), &bad) == PORTCULLIS_RESULT_DEFINITIONS_JSON,
          "a misspelt field is refused");
    CHECK(bad == (portcullis_definitions *)&s, "nothing written on failure");
    CHECK(portcullis_definitions_count(NULL) == 0, "NULL holds none");

    portcullis_definitions *none = NULL;
    CHECK(portcullis_definitions_unavailable(S("no catalog connection"), &none) == PORTCULLIS_RESULT_OK, "unavailable");
    CHECK(portcullis_session_set_definitions(s, none) == PORTCULLIS_RESULT_OK, "set unavailable");
    portcullis_definitions_free(none);
    CHECK(verdict_of(e, agent, s, S("SELECT * FROM orders")) == PORTCULLIS_VERDICT_DENY, "any relation may be a view");
    CHECK(verdict_of(e, agent, s, S("SELECT 1")) == PORTCULLIS_VERDICT_ALLOW, "no relation, no doubt");
    CHECK(portcullis_session_set_definitions(s, NULL) == PORTCULLIS_RESULT_OK, "views taken away");
    CHECK(verdict_of(e, agent, s, S("SELECT * FROM orders")) == PORTCULLIS_VERDICT_ALLOW, "by name again");
    CHECK(portcullis_session_set_definitions(NULL, NULL) == PORTCULLIS_RESULT_NULL_PARAMETER, "NULL session");

    portcullis_session_free(s);
    portcullis_identity_free(agent);
    portcullis_engine_free(e);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: abi POLICY_FILE JWKS_FILE TOKEN_FILE\n");
        return 2;
    }
    size_t policy_len, jwks_len, token_len;
    char *policy = read_file(argv[1], &policy_len);
    char *jwks = read_file(argv[2], &jwks_len);
    char *token = read_file(argv[3], &token_len);
    while (token_len > 0 && (token[token_len - 1] == '\n' || token[token_len - 1] == ' ')) token[--token_len] = 0;

    test_errors();
    test_decisions(policy, policy_len);
    test_masking(policy, policy_len);
    test_keys();
    test_tokens(policy, policy_len, jwks, jwks_len, token, token_len);
    test_threads(policy, policy_len);
    test_views(policy, policy_len);

    free(policy);
    free(jwks);
    free(token);
    fprintf(stderr, "abi: %d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
