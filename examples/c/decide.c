/*
 * Embedding the Portcullis engine in a C program: load a policy, decide
 * statements for an agent acting for a person, mask a result row.
 *
 * Build and run from the repository root:
 *
 *     cargo build -p portcullis-ffi
 *     cc -Icrates/ffi/include examples/c/decide.c -Ltarget/debug -lportcullis \
 *        -Wl,-rpath,"$PWD/target/debug" -o target/decide
 *     target/decide examples/policy.toml
 *
 * (or link target/debug/libportcullis.a with -lpthread -ldl -lm instead).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "portcullis.h"

/* Prints what went wrong and exits: every failing call comes here. */
static void check(portcullis_result r, const char *what) {
    if (r == PORTCULLIS_RESULT_OK) return;
    char msg[1024];
    size_t n;
    portcullis_error(r, msg, sizeof msg, &n);
    fprintf(stderr, "error: %s: %s (code %u)\n", what, msg, (unsigned)r);
    exit(2);
}

static const char *verdict_name(portcullis_verdict v) {
    switch (v) {
        case PORTCULLIS_VERDICT_ALLOW: return "allow";
        case PORTCULLIS_VERDICT_REQUIRE_APPROVAL: return "require_approval";
        default: return "deny";
    }
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *text = malloc((size_t)n + 1);
    if (!text || fread(text, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "error: cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    *len = (size_t)n;
    return text;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "examples/policy.toml";
    size_t len;
    char *policy = read_file(path, &len);

    /* Errors name the file, line and column: "policy.toml:12:1: unknown field ...". */
    portcullis_engine *engine = NULL;
    check(portcullis_engine_new(policy, len, path, strlen(path), NULL, 0, &engine), "policy");
    free(policy);

    /* An agent acting for a person, as a verified token would name it
     * (portcullis_verify_jwt makes the same handle from an OIDC token). */
    const char *who = "{\"subject\": \"alice@example.com\", \"groups\": [\"ai-agents\"], \"actor\": \"copilot-7\"}";
    portcullis_identity *agent = NULL;
    check(portcullis_identity_new(who, strlen(who), &agent), "identity");
    portcullis_session *session = NULL;
    check(portcullis_session_new(engine, &session), "session");

    const char *statements[] = {
        "SELECT id, total FROM orders WHERE customer_id = 42",
        "DROP TABLE orders",
        "DELETE FROM orders WHERE id = 7",
        "SELECT * FROM orders; SELECT api_key FROM secrets",
    };
    for (size_t i = 0; i < sizeof statements / sizeof statements[0]; i++) {
        portcullis_decision *d = NULL;
        check(portcullis_decide(engine, agent, session, statements[i], strlen(statements[i]), &d), "decide");
        portcullis_str rule = portcullis_decision_rule(d);
        printf("%-16s %-28.*s %s\n", verdict_name(portcullis_decision_verdict(d)), rule.data ? (int)rule.len : 1,
               rule.data ? rule.data : "-", statements[i]);
        portcullis_decision_free(d);
    }

    /* Masking one result row: the columns as the server describes them. */
    const char *sql = "SELECT name, email, ssn, note FROM customers";
    portcullis_decision *d = NULL;
    check(portcullis_decide(engine, agent, session, sql, strlen(sql), &d), "decide");
    portcullis_column columns[4] = {
        {"name", 4, "public.customers.name", 21, 25, 0},
        {"email", 5, "public.customers.email", 22, 25, 0},
        {"ssn", 3, "public.customers.ssn", 20, 25, 0},
        {"note", 4, "public.customers.note", 21, 25, 0},
    };
    portcullis_masker *masker = NULL;
    check(portcullis_masker_new(engine, agent, d, 0, columns, 4, &masker), "masker");
    const char *values[4] = {"Alice Martin", "alice@example.com", "123-45-6789", "card on file: 4012888888881881"};
    portcullis_cell row[4];
    for (int i = 0; i < 4; i++) row[i] = (portcullis_cell){(const uint8_t *)values[i], strlen(values[i]), 0};
    uint8_t buf[1024];
    size_t used, changed;
    check(portcullis_mask_row(masker, row, 4, buf, sizeof buf, &used, &changed), "mask");
    printf("masked %zu of 4: ", changed);
    for (int i = 0; i < 4; i++)
        printf("%s%.*s", i ? " | " : "", row[i].is_null ? 4 : (int)row[i].len,
               row[i].is_null ? "NULL" : (const char *)row[i].data);
    printf("\n");

    portcullis_masker_free(masker);
    portcullis_decision_free(d);
    portcullis_session_free(session);
    portcullis_identity_free(agent);
    portcullis_engine_free(engine);
    return 0;
}
