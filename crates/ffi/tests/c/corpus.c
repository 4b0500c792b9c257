/*
 * Runs decision cases through the C ABI: the shared corpus
 * (testdata/decisions), flattened by tests/c.rs into records of
 *
 *     <key> <length>\n<bytes>\n
 *
 * with keys `policy` (a new engine), `case` (a new case: its name),
 * `identity` (JSON), `search_path`, `scs` (on|off), `prepared` + `prepared_sql`
 * and `sql` (decide). For every case it writes to the output file
 *
 *     case <length>\n<name>\nverdict <n>\nrule <length>\n<rule>\njson <length>\n<json>\n
 *
 * which tests/c.rs compares with what the Rust core decides.
 *
 * usage: corpus FIXTURE OUTPUT
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "portcullis.h"

static void die(const char *what, portcullis_result r) {
    char msg[1024];
    size_t n = 0;
    portcullis_error(r, msg, sizeof msg, &n);
    fprintf(stderr, "corpus: %s: error %u: %s\n", what, (unsigned)r, msg);
    exit(1);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "corpus: out of memory\n");
        exit(2);
    }
    *len = n;
    return buf;
}

/* Reads the next record: its key into `key` and its bytes as (*value, *value_len). */
static int next_record(const char **p, const char *end, char key[32], const char **value, size_t *value_len) {
    if (*p >= end) return 0;
    const char *q = *p;
    size_t k = 0;
    while (q < end && *q != ' ' && k < 31) key[k++] = *q++;
    key[k] = 0;
    if (q >= end || *q++ != ' ') goto malformed;
    size_t len = 0;
    const char *digits = q;
    while (q < end && *q >= '0' && *q <= '9') len = len * 10 + (size_t)(*q++ - '0');
    if (q == digits || q >= end || *q++ != '\n' || (size_t)(end - q) < len + 1 || q[len] != '\n') goto malformed;
    *value = q;
    *value_len = len;
    *p = q + len + 1;
    return 1;
malformed:
    fprintf(stderr, "corpus: malformed fixture record (%ld bytes left)\n", (long)(end - *p));
    exit(2);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: corpus FIXTURE OUTPUT\n");
        return 2;
    }
    size_t len;
    char *fixture = read_file(argv[1], &len);
    FILE *out = fopen(argv[2], "wb");
    if (!out) {
        perror(argv[2]);
        return 2;
    }
    const char *p = fixture, *end = fixture + len;
    char key[32];
    const char *value;
    size_t value_len;
    portcullis_engine *engine = NULL;
    portcullis_identity *identity = NULL;
    portcullis_session *session = NULL;
    const char *prepared_name = NULL;
    size_t prepared_name_len = 0;
    size_t cases = 0;
    portcullis_result r;
    while (next_record(&p, end, key, &value, &value_len)) {
        if (strcmp(key, "policy") == 0) {
            portcullis_engine_free(engine);
            engine = NULL;
            if ((r = portcullis_engine_new(value, value_len, "policy.toml", 11, NULL, 0, &engine))) die("engine", r);
        } else if (strcmp(key, "case") == 0) {
            portcullis_identity_free(identity);
            portcullis_session_free(session);
            identity = NULL;
            session = NULL;
            if ((r = portcullis_session_new(engine, &session))) die("session", r);
            fprintf(out, "case %zu\n%.*s\n", value_len, (int)value_len, value);
        } else if (strcmp(key, "identity") == 0) {
            if ((r = portcullis_identity_new(value, value_len, &identity))) die("identity", r);
        } else if (strcmp(key, "search_path") == 0) {
            if ((r = portcullis_session_set_search_path(session, value, value_len))) die("search_path", r);
        } else if (strcmp(key, "scs") == 0) {
            bool on = value_len == 2 && memcmp(value, "on", 2) == 0;
            if ((r = portcullis_session_set_standard_conforming_strings(session, on))) die("scs", r);
        } else if (strcmp(key, "prepared") == 0) {
            prepared_name = value;
            prepared_name_len = value_len;
        } else if (strcmp(key, "prepared_sql") == 0) {
            r = portcullis_session_add_prepared(session, prepared_name, prepared_name_len, value, value_len);
            if (r) die("prepared", r);
        } else if (strcmp(key, "sql") == 0) {
            portcullis_decision *d = NULL;
            if ((r = portcullis_decide(engine, identity, session, value, value_len, &d))) die("decide", r);
            portcullis_str rule = portcullis_decision_rule(d);
            portcullis_str json = portcullis_decision_json(d);
            fprintf(out, "verdict %u\n", (unsigned)portcullis_decision_verdict(d));
            fprintf(out, "rule %zu\n%.*s\n", rule.len, (int)rule.len, rule.data ? rule.data : "");
            fprintf(out, "json %zu\n", json.len);
            fwrite(json.data, 1, json.len, out);
            fputc('\n', out);
            portcullis_decision_free(d);
            cases++;
        } else {
            fprintf(stderr, "corpus: unknown record `%s`\n", key);
            return 2;
        }
    }
    portcullis_identity_free(identity);
    portcullis_session_free(session);
    portcullis_engine_free(engine);
    free(fixture);
    if (fclose(out) != 0) {
        perror(argv[2]);
        return 2;
    }
    fprintf(stderr, "corpus: %zu cases decided\n", cases);
    return 0;
}
