//! The gateway through psql: `-c` with several statements, `\d`, `\copy`
//! both ways, and the errors a person sees.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use portcullis_testkit::stack::Stack;
use portcullis_testkit::text;

#[test]
fn psql_sessions() {
    let stack = Stack::start();
    let agent = stack.token("alice", &["ai-agents"], Some("copilot-cli"));
    let developer = stack.token("dave", &["developers"], None);

    // Several statements in one -c: one string, decided as a whole.
    let out =
        stack.psql(&agent, &["-At", "-c", "SELECT name, ssn FROM customers WHERE id = 1; SELECT count(*) FROM orders"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Alice Martin|****6789\n5000\n");

    // A denied statement anywhere in the string refuses the whole string.
    let out = stack.psql(&agent, &["-At", "-c", "SELECT 1; DROP TABLE orders"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("refused by policy (rule no-ddl-for-agents)"), "{err}");
    assert!(text(&out.stdout).is_empty(), "nothing ran: {}", text(&out.stdout));

    // \d works for an agent: the catalog reads psql makes are allowed.
    let out = stack.psql(&agent, &["-c", "\\d customers"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let described = text(&out.stdout);
    assert!(described.contains("Table \"public.customers\"") && described.contains("ssn"), "{described}");

    // \copy out: masked in COPY text format, the detector on free text.
    let file = stack.path("customers.tsv");
    let copy = format!("\\copy (SELECT id, ssn, note FROM customers ORDER BY id) TO '{}'", file.display());
    let out = stack.psql(&agent, &["-c", &copy]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let copied = std::fs::read_to_string(&file).unwrap();
    assert_eq!(copied.lines().next(), Some("1\t****6789\tprefers e-mail"));
    assert!(copied.contains("2\t****7890\tcard on file: ****1881"), "{copied}");

    // A whole table copied out: columns resolved through the catalog.
    let whole = stack.path("whole.tsv");
    let out = stack.psql(&agent, &["-c", &format!("\\copy customers TO '{}'", whole.display())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let copied = std::fs::read_to_string(&whole).unwrap();
    assert!(copied.starts_with("1\tAlice Martin\t****@example.com\t****6789\t****1111\t"), "{copied}");

    // \copy in: allowed for developers into orders, refused for agents into customers.
    let input = stack.path("orders.tsv");
    std::fs::write(&input, "1\t10.50\tshipped\n2\t20.00\trefunded\n").unwrap();
    let load = format!("\\copy orders (customer_id, total, status) FROM '{}'", input.display());
    let out = stack.psql(&developer, &["-c", &load]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "COPY 2");
    let load = format!("\\copy customers (id, name) FROM '{}'", input.display());
    let out = stack.psql(&agent, &["-c", &load]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("refused by policy"), "{}", text(&out.stderr));
    let out = stack.psql(&developer, &["-At", "-c", "SELECT count(*) FROM orders"]);
    assert_eq!(text(&out.stdout), "5002\n");
    let out = stack.psql(&developer, &["-At", "-c", "SELECT count(*) FROM customers"]);
    assert_eq!(text(&out.stdout), "3\n");

    // An error quoting a masked value is withheld; others keep their text.
    let out = stack.psql(&agent, &["-At", "-c", "SELECT ssn::int FROM customers"]);
    let err = text(&out.stderr);
    assert!(err.contains("22P02") || err.contains("withheld"), "{err}");
    assert!(!err.contains("6789"), "{err}");
    let out = stack.psql(&agent, &["-At", "-c", "SELECT 'x'::int"]);
    assert!(text(&out.stderr).contains("invalid input syntax for type integer: \"x\""), "{}", text(&out.stderr));

    // A wrong token: psql's usual message, nothing about why.
    let out = stack.psql("nope", &["-c", "SELECT 1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid token"), "{}", text(&out.stderr));
}

/// A masked value reaches a server message in more ways than a list of
/// error codes names: a name looked up from it (`current_setting`, a
/// `regclass` cast, a privilege function), a cursor's query failing in
/// `FETCH` or `MOVE`, the stored row a failed `UPDATE` quotes. For a caller
/// a mask applies to, every such message is withheld (its SQLSTATE kept);
/// messages of reads that touch no masked column, and those answering a
/// `Parse`, keep their text.
#[test]
fn errors_never_quote_a_value_masked_for_the_caller() {
    let stack = Stack::start();
    let agent = stack.token("alice", &["ai-agents"], Some("copilot-cli"));
    let developer = stack.token("dave", &["developers"], None);
    let secrets = ["6789", "7890", "8901", "alice@", "bob@", "carol@"];
    let withheld = |out: &std::process::Output, code: &str, what: &str| {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(&format!("SQLSTATE {code}")) && err.contains("withheld"), "{what}: {err}");
        for secret in secrets {
            assert!(!err.contains(secret), "{what} quotes {secret}: {err}");
        }
    };
    for (sql, code) in [
        ("SELECT current_setting(string_agg(ssn || '|' || email, ';')) FROM customers", "42704"),
        ("SELECT ssn::regclass FROM customers", "42P01"),
        ("SELECT ssn::regnamespace FROM customers", "3F000"),
        ("SELECT has_database_privilege(email, 'CONNECT') FROM customers", "3D000"),
        ("SELECT (ssn || ' &')::tsquery FROM customers", "42601"),
        ("SELECT ssn::int FROM customers", "22P02"),
    ] {
        withheld(&stack.psql(&agent, &["-At", "-c", sql]), code, sql);
    }
    // A cursor over a masked column fails in FETCH and MOVE, statements of
    // their own: the rows are masked, and so are the errors.
    for step in ["FETCH c", "MOVE ALL IN c"] {
        let out = stack.psql(
            &agent,
            &["-At", "-c", "BEGIN", "-c", "DECLARE c CURSOR FOR SELECT email::int FROM customers", "-c", step],
        );
        withheld(&out, "22P02", step);
    }
    // An UPDATE that reads no masked column: the server quotes the row.
    let out = stack.psql(&developer, &["-At", "-c", "UPDATE customers SET id = NULL WHERE id = 1"]);
    withheld(&out, "23502", "the failing row");
    // What carries no value keeps its text, and so do reads of no masked
    // column.
    let out = stack.psql(&agent, &["-At", "-c", "BEGIN", "-c", "SELECT 1/0", "-c", "SELECT 1"]);
    let err = text(&out.stderr);
    assert!(err.contains("division by zero") && err.contains("current transaction is aborted"), "{err}");
    let out = stack.psql(&agent, &["-At", "-c", "SELECT (id || 'x')::regclass FROM customers WHERE id = 1"]);
    assert!(text(&out.stderr).contains("relation \"1x\" does not exist"), "{}", text(&out.stderr));
}

/// Two ways PostgreSQL reads a column the statement does not name as one:
/// attribute notation (`c.to_json` is `to_json(c)`, the whole row, when
/// `customers` has no column `to_json`) and a subquery's bare column its
/// table lacks (`(SELECT email FROM orders)` reads the outer
/// `customers.email`). Both come out masked.
#[test]
fn columns_postgresql_resolves_elsewhere_are_masked() {
    let stack = Stack::start();
    let agent = stack.token("alice", &["ai-agents"], Some("copilot-cli"));
    for sql in [
        "SELECT c.to_json FROM customers c WHERE c.id = 1",
        "SELECT c.concat FROM customers c WHERE c.id = 1",
        "SELECT customers.to_jsonb ->> 'ssn' FROM customers WHERE id = 1",
        "SELECT (SELECT ssn FROM orders LIMIT 1) FROM customers WHERE id = 1",
        "SELECT (SELECT email FROM orders LIMIT 1) FROM customers WHERE id = 1",
        "SELECT (SELECT c FROM orders LIMIT 1) FROM customers c WHERE c.id = 1",
        "SELECT x.v FROM customers c, LATERAL (SELECT email AS v FROM orders LIMIT 1) x WHERE c.id = 1",
    ] {
        let out = stack.psql(&agent, &["-At", "-c", sql]);
        assert!(out.status.success(), "{sql}: {}", text(&out.stderr));
        let got = text(&out.stdout);
        assert!(!got.trim().is_empty(), "{sql}: a row");
        assert!(!got.contains("6789") && !got.contains("alice@"), "{sql}: {got}");
    }
    // A real column of a name a function also has keeps its own masking.
    let out = stack.psql(&agent, &["-At", "-c", "SELECT c.name FROM customers c WHERE c.id = 1"]);
    assert_eq!(text(&out.stdout), "Alice Martin\n");
}

#[test]
fn masked_values_cannot_be_laundered_through_a_write() {
    let stack = Stack::start();
    let developer = stack.token("dave", &["developers"], None);
    let launder = "UPDATE orders SET status = c.ssn FROM customers c WHERE c.id = orders.customer_id";
    let out = stack.psql(&developer, &["-At", "-c", launder]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("masked data may not be copied"), "{}", text(&out.stderr));
    let out = stack.psql(&developer, &["-At", "-c", "SELECT set_config('my.v', ssn, false) FROM customers"]);
    assert_eq!(out.status.code(), Some(1));
    // Advisory lock keys show in pg_locks; the random seed replays in
    // random(); a sequence keeps its value.
    for sql in [
        "SELECT pg_advisory_lock(replace(ssn, '-', '')::bigint) FROM customers",
        "SELECT setseed(ascii(ssn) / 256.0) FROM customers",
        "SELECT setval('orders_id_seq', replace(ssn, '-', '')::bigint) FROM customers",
    ] {
        let out = stack.psql(&developer, &["-At", "-c", sql]);
        assert_eq!(out.status.code(), Some(1), "{sql}");
        assert!(text(&out.stderr).contains("masked data may not be copied"), "{sql}: {}", text(&out.stderr));
    }
    // The planner's statistics hold sampled values of masked columns.
    let out =
        stack.psql(&developer, &["-At", "-c", "SELECT histogram_bounds FROM pg_stats WHERE tablename = 'customers'"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("values sampled from every column"), "{}", text(&out.stderr));
    let out = stack.psql(&developer, &["-At", "-c", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"]);
    assert_eq!(text(&out.stdout), "0\n");
    let out = stack.psql(&developer, &["-At", "-c", "SELECT count(*) FROM orders WHERE status LIKE '%-%-%'"]);
    assert_eq!(text(&out.stdout), "0\n", "no SSN reached orders");
}

/// `\copy ... (FORMAT binary)` through the gateway is masked row by row and
/// comes out byte for byte as PostgreSQL's own binary COPY of the masked
/// values: masked text columns hold the masked text (their types come
/// from the catalog), a masked value whose type the gateway does not know
/// is NULL, and the detector rewrites free text.
#[test]
fn binary_copy_out_is_masked_as_postgresql_writes_it() {
    let stack = Stack::start();
    let agent = stack.token("alice", &["ai-agents"], Some("copilot-cli"));
    let cases = [
        (
            "customers",
            "SELECT * FROM (VALUES \
             (1, 'Alice Martin', '****@example.com', '****6789', '****1111', 'prefers e-mail'), \
             (2, 'Bob Chen', '****@example.org', '****7890', '****0004', 'card on file: ****1881'), \
             (3, 'Carol Diaz', '****@example.net', '****8901', '****0009', 'VIP since 2019')) v",
        ),
        (
            "(SELECT id, ssn AS tax_id, note FROM customers ORDER BY id)",
            "SELECT * FROM (VALUES (1, '****6789', 'prefers e-mail'), (2, '****7890', 'card on file: ****1881'), \
             (3, '****8901', 'VIP since 2019')) v",
        ),
        ("customers (id, ssn)", "SELECT * FROM (VALUES (1, '****6789'), (2, '****7890'), (3, '****8901')) v"),
        (
            "(SELECT id, upper(ssn) FROM customers ORDER BY id)",
            "SELECT * FROM (VALUES (1, NULL::text), (2, NULL), (3, NULL)) v",
        ),
    ];
    for (i, (source, expected)) in cases.iter().enumerate() {
        let through = stack.path(&format!("through-{i}.bin"));
        let direct = stack.path(&format!("direct-{i}.bin"));
        let copy = format!("\\copy {source} TO '{}' (FORMAT binary)", through.display());
        let out = stack.psql(&agent, &["-c", &copy]);
        assert!(out.status.success(), "{source}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "COPY 3", "{source}");
        stack.owner_sql(&format!("\\copy ({expected}) TO '{}' (FORMAT binary)", direct.display()));
        let (through, direct) = (std::fs::read(&through).unwrap(), std::fs::read(&direct).unwrap());
        assert!(through.starts_with(b"PGCOPY\n\xff\r\n\0"), "{source}");
        assert_eq!(through, direct, "{source}: the gateway's bytes are PostgreSQL's own");
    }
    // Nothing masked for the exempt: the server's bytes as they are.
    let reader = stack.token("rita", &["ai-agents", "pii-readers"], None);
    let file = stack.path("reader.bin");
    let out =
        stack.psql(&reader, &["-c", &format!("\\copy customers (id, ssn) TO '{}' (FORMAT binary)", file.display())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.windows(11).any(|w| w == b"123-45-6789"), "the exempt see the values");
}

/// The columns of a `VALUES` list joined with a masked table keep their
/// own (unmasked) values; a `FULL JOIN ... USING` column merged with a
/// masked one is masked.
#[test]
fn values_joined_with_a_masked_table_keep_their_own_lineage() {
    let stack = Stack::start();
    let agent = stack.token("alice", &["ai-agents"], Some("copilot-cli"));
    let sql = "SELECT * FROM (VALUES (1, 'first'), (2, 'second')) v(k, label) \
               JOIN customers c ON c.id = v.k WHERE c.id = 1";
    let out = stack.psql(&agent, &["-At", "-c", sql]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fields: Vec<String> = text(&out.stdout).trim_end().split('|').map(str::to_string).collect();
    assert_eq!(fields[..2], ["1", "first"], "the list's columns are its own");
    assert!(fields.contains(&"****6789".to_string()), "{fields:?}");
    let sql = "SELECT * FROM (VALUES ('x')) v(ssn) FULL JOIN customers c USING (ssn) ORDER BY 1";
    let out = stack.psql(&agent, &["-At", "-c", sql]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("123-45-6789") && !stdout.contains("234-56-7890"), "{stdout}");
}

/// libpq sends `PGDATESTYLE` and `PGTZ` as the startup parameters
/// `datestyle` and `timezone` (lower case); PostgreSQL matches setting
/// names without regard to case, and so does the gateway, which passes
/// them on under PostgreSQL's names.
#[test]
fn psql_with_pgdatestyle_and_pgtz_logs_in_with_those_settings() {
    let stack = Stack::with_policy("version = 1\n[[rule]]\nname = \"all\"\neffect = \"allow\"\ngroups = [\"dba\"]\n");
    let dba = stack.token("dora", &["dba"], None);
    let out = stack
        .program("psql")
        .args(["-X", "-At", "-d"])
        .arg(format!("host=127.0.0.1 port={} user=agent dbname=app sslmode=disable", stack.addr.port()))
        .env("PGPASSWORD", &dba)
        .env("PGDATESTYLE", "ISO,DMY")
        .env("PGTZ", "Pacific/Auckland")
        .args(["-c", "SHOW datestyle", "-c", "SHOW timezone"])
        .args(["-c", "SELECT '03/02/2024'::date, '2024-01-01 00:00:00+00'::timestamptz"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ISO, DMY\nPacific/Auckland\n2024-02-03|2024-01-01 13:00:00+13\n");
}

/// `EXPLAIN` output is a plan, judged like the statement's text: it comes
/// back as PostgreSQL wrote it, for an agent too, masked columns named in
/// it; `EXPLAIN ANALYZE` runs the statement and shows its counts.
#[test]
fn explain_shows_the_plan() {
    let stack = Stack::start();
    let agent = stack.token("alice", &["ai-agents"], Some("copilot-cli"));
    let out = stack.psql(&agent, &["-At", "-c", "EXPLAIN (VERBOSE, COSTS OFF) SELECT ssn FROM customers WHERE id = 1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan = text(&out.stdout);
    assert!(plan.contains("Seq Scan on public.customers") || plan.contains("Index Scan"), "{plan}");
    assert!(plan.contains("Output: ssn") && !plan.contains("[redacted]"), "{plan}");

    let out = stack
        .psql(&agent, &["-At", "-c", "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT * FROM customers"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan = text(&out.stdout);
    assert!(plan.contains("(actual rows=3") || plan.contains("actual rows=3.00"), "{plan}");
}

/// `COPY ... TO STDOUT` in CSV, with every option the server writes CSV
/// with, through psql: the gateway's masked output is byte for byte what
/// PostgreSQL itself writes for the masked values (quoting, escapes, NULL,
/// header), and `\copy ... csv` writes the same file.
#[test]
fn csv_copy_out_is_masked_as_postgresql_writes_it() {
    let stack = Stack::start();
    stack.owner_sql(
        "INSERT INTO customers (id, name, ssn) VALUES \
         (4, 'Dan \"the man\", Jr.', '456-78-9012'), (5, E'Eve\\nNewline; '' \\\\', NULL), (6, '', '567-89-0123')",
    );
    let agent = stack.token("alice", &["ai-agents"], None);
    for options in [
        "(FORMAT csv)",
        "(FORMAT csv, HEADER)",
        r"(FORMAT csv, HEADER, DELIMITER ';', NULL 'NULL', QUOTE '''', ESCAPE '\', FORCE_QUOTE *)",
        "(FORMAT csv, FORCE_QUOTE (ssn), NULL '-')",
        "CSV HEADER QUOTE '|'",
    ] {
        let out = stack.psql(
            &agent,
            &["-q", "-c", &format!("COPY (SELECT id, name, ssn FROM customers ORDER BY id) TO STDOUT {options}")],
        );
        assert!(out.status.success(), "{options}: {}", text(&out.stderr));
        let masked = text(&out.stdout);
        // What PostgreSQL writes when the values are the masked ones.
        let expected = stack
            .cluster
            .psql(
                "app",
                &format!(
                    "COPY (SELECT id, name, '****' || right(ssn, 4) AS ssn FROM customers ORDER BY id) TO STDOUT \
                     {options}"
                ),
            )
            .unwrap();
        assert_eq!(masked.strip_suffix('\n'), Some(expected.as_str()), "{options}");
        assert!(!masked.contains("6789") || masked.contains("****6789"), "{masked}");
        assert!(!masked.contains("456-78"), "{masked}");
    }

    // \copy to a file, and the whole table (columns from the catalog).
    let file = stack.path("customers.csv");
    let copy = format!("\\copy (SELECT id, name, ssn FROM customers ORDER BY id) TO '{}' CSV HEADER", file.display());
    let out = stack.psql(&agent, &["-c", &copy]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let copied = std::fs::read_to_string(&file).unwrap();
    assert!(copied.starts_with("id,name,ssn\n1,Alice Martin,****6789\n"), "{copied}");
    assert!(copied.contains("4,\"Dan \"\"the man\"\", Jr.\",****9012\n"), "{copied}");
    let out = stack.psql(&agent, &["-q", "-c", "COPY customers TO STDOUT (FORMAT csv, HEADER)"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let whole = text(&out.stdout);
    assert!(
        whole.starts_with(
            "id,name,email,ssn,card,note\n1,Alice Martin,****@example.com,****6789,****1111,prefers e-mail\n"
        ),
        "{whole}"
    );
    assert!(whole.contains("card on file: ****1881"), "the detector reads CSV values too: {whole}");

    // A layout whose lines the gateway cannot read: refused, naming the
    // option to drop, and the session goes on.
    let out = stack.psql(
        &agent,
        &["-c", "COPY customers TO STDOUT (FORMAT csv, ENCODING 'LATIN1')", "-c", "SELECT count(*) FROM customers"],
    );
    let err = text(&out.stderr);
    assert!(err.contains("drop the ENCODING option"), "{err}");
    assert!(!text(&out.stdout).contains("6789"), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("6\n"), "the next statement ran: {}", text(&out.stdout));
}

/// A mask's `inference` through psql: each clause it names is refused with
/// a reason naming the mask, the rest of the session goes on, and
/// statements that only return the column stay allowed (masked).
#[test]
fn inference_control_refuses_probing_a_masked_column() {
    let policy = r#"
version = 1
[[rule]]
name = "agents-read"
effect = "allow"
groups = ["ai-agents"]
classes = ["read"]
tables = ["public.customers", "public.orders"]

[[mask]]
name = "ssn"
columns = ["public.customers.ssn"]
strategy = "partial"
show_last = 4
inference = ["filter", "order", "group", "join"]
"#;
    let stack = Stack::with_policy(policy);
    let agent = stack.token("alice", &["ai-agents"], Some("copilot"));
    for (sql, clause) in [
        ("SELECT id FROM customers WHERE ssn LIKE '123%'", "filter"),
        ("SELECT count(*) FROM customers WHERE md5(ssn) = md5('123-45-6789')", "filter"),
        ("SELECT id FROM customers ORDER BY ssn LIMIT 1", "order"),
        ("SELECT id, ssn FROM customers ORDER BY 2", "order"),
        ("SELECT left(ssn, 3), count(*) FROM customers GROUP BY 1", "group"),
        ("SELECT c.id FROM customers c JOIN customers d ON c.ssn = d.ssn", "join"),
        ("SELECT ssn FROM customers INTERSECT SELECT '123-45-6789'", "join"),
    ] {
        let out = stack.psql(&agent, &["-At", "-c", sql]);
        assert_eq!(out.status.code(), Some(1), "{sql}");
        let err = text(&out.stderr);
        assert!(err.contains("mask `ssn`") && err.contains(clause), "{sql}: {err}");
    }
    let out = stack.psql(&agent, &["-At", "-c", "SELECT id, ssn FROM customers WHERE id = 1 ORDER BY id"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1|****6789\n");
    let out =
        stack.psql(&agent, &["-At", "-c", "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "5000\n");
}
