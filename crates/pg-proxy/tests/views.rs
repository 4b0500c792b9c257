//! Views judged by what they read, through real clients: a view in an
//! allowed schema over a forbidden table is refused, view columns derived
//! from masked ones are masked (renamed, nested in JSON, over views,
//! materialized), and views created by others are seen.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::{Duration, Instant};

use portcullis_testkit::stack::{Stack, APP_PASSWORD};
use portcullis_testkit::{bin, text};

const POLICY: &str = r#"
version = 1
[settings]
VIEWS
[[rule]]
name    = "agents-read"
effect  = "allow"
groups  = ["ai-agents"]
classes = ["read", "session", "transaction"]
tables  = ["public.*", "pg_catalog.*"]

[[rule]]
name    = "builders"
effect  = "allow"
groups  = ["builders"]
classes = ["ddl", "read", "transaction"]
tables  = ["public.*", "pg_catalog.*"]

[[rule]]
name    = "writers"
effect  = "allow"
groups  = ["writers"]
classes = ["read", "write"]
tables  = ["public.*", "pg_catalog.*"]

[[rule]]
name    = "dba-all"
effect  = "allow"
groups  = ["dba"]

[[rule]]
name    = "no-secrets"
effect  = "deny"
groups  = ["ai-agents", "writers"]
tables  = ["public.secrets"]
reason  = "secrets are not for agents"

[[mask]]
name      = "ssn"
columns   = ["public.customers.ssn"]
strategy  = "partial"
show_last = 4
exempt_groups = ["dba"]
"#;

const VIEWS: &str = "\
CREATE VIEW public.leak AS SELECT * FROM secrets;
CREATE VIEW public.leak_twice AS SELECT api_key AS k FROM public.leak;
CREATE VIEW public.contacts AS SELECT id, ssn AS tax_id, name FROM customers;
CREATE VIEW public.cards AS SELECT json_build_object('id', id, 'tax', ssn) AS doc FROM customers;
CREATE VIEW public.nested AS SELECT c.tax_id AS t FROM public.contacts c;
CREATE MATERIALIZED VIEW public.rollup AS SELECT ssn AS s, count(*) AS n FROM customers GROUP BY ssn;
CREATE FUNCTION public.mystery() RETURNS text LANGUAGE sql AS $$ SELECT api_key FROM secrets LIMIT 1 $$;
CREATE VIEW public.by_function AS SELECT public.mystery() AS m;
CREATE VIEW public.plain AS SELECT id, name FROM customers;
CREATE FUNCTION public.tax_of(int) RETURNS text LANGUAGE sql AS $$ SELECT ssn FROM customers WHERE id = $1 $$;
CREATE FUNCTION public.n_customers() RETURNS bigint LANGUAGE sql RETURN (SELECT count(*) FROM public.customers);
CREATE FUNCTION public.pl() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;
CREATE TABLE public.notes (id int, author int, body text);
INSERT INTO public.notes VALUES (1, 1, 'hello');
ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.notes FORCE ROW LEVEL SECURITY;
CREATE POLICY by_key ON public.notes USING (author IN (SELECT id FROM secrets WHERE api_key LIKE 'AKIA%'));
CREATE TABLE public.drafts (id int);
CREATE RULE forget AS ON INSERT TO public.drafts DO ALSO DELETE FROM secrets WHERE id = new.id;
CREATE TABLE public.stamped (id int, at timestamptz);
CREATE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.at := now(); RETURN NEW; END $$;
CREATE TRIGGER stamp BEFORE INSERT ON public.stamped FOR EACH ROW EXECUTE FUNCTION public.stamp();
";

fn stack(views: &str, refresh: &str) -> Stack {
    Stack::builder()
        .policy(&POLICY.replace("VIEWS", views))
        .config(&format!("[catalog]\nrefresh_interval = \"{refresh}\""))
        .setup_sql(VIEWS)
        .start()
}

/// The first column of every row of a simple query's answer.
fn values(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .collect()
}

/// psql's `-At` output of `sql` for `token`, or its error text.
fn psql(stack: &Stack, token: &str, sql: &str) -> Result<String, String> {
    let out = stack.psql(token, &["-At", "-c", sql]);
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

#[test]
fn views_over_forbidden_tables_are_refused_and_masks_follow_view_columns() {
    let stack = stack("", "1h");
    let agent = stack.token("alice", &["ai-agents"], Some("copilot"));
    for sql in ["SELECT * FROM leak", "TABLE leak", "SELECT k FROM leak_twice", "SELECT m FROM by_function"] {
        let err = psql(&stack, &agent, sql).unwrap_err();
        assert!(!err.contains("AKIA"), "{sql}: {err}");
        assert!(err.contains("refused") || err.contains("denied") || err.contains("secrets"), "{sql}: {err}");
    }
    assert!(psql(&stack, &agent, "SELECT * FROM leak").unwrap_err().contains("secrets are not for agents"));
    assert!(psql(&stack, &agent, "SELECT m FROM by_function").unwrap_err().contains("secrets are not for agents"));
    assert!(psql(&stack, &agent, "SELECT public.mystery()").unwrap_err().contains("secrets are not for agents"));
    // SQL functions: judged and masked by their bodies; other languages stay opaque.
    assert_eq!(psql(&stack, &agent, "SELECT tax_of(2)").unwrap(), "[redacted]\n");
    assert_eq!(psql(&stack, &agent, "SELECT n_customers()").unwrap(), "3\n");
    let err = psql(&stack, &agent, "SELECT pl()").unwrap_err();
    assert!(err.contains("`pl`") && err.contains("not visible"), "{err}");

    // Renamed: the mask's own strategy.
    assert_eq!(
        psql(&stack, &agent, "SELECT tax_id, name FROM contacts WHERE id = 1").unwrap(),
        "****6789|Alice Martin\n"
    );
    assert_eq!(psql(&stack, &agent, "SELECT * FROM contacts WHERE id = 1").unwrap(), "1|****6789|Alice Martin\n");
    // Over a view, and computed in the statement.
    assert_eq!(psql(&stack, &agent, "SELECT t FROM nested ORDER BY t LIMIT 1").unwrap(), "****6789\n");
    assert_eq!(psql(&stack, &agent, "SELECT upper(tax_id) FROM contacts WHERE id = 1").unwrap(), "[redacted]\n");
    // Nested in JSON: masked whole.
    assert_eq!(psql(&stack, &agent, "SELECT doc FROM cards LIMIT 1").unwrap(), "[redacted]\n");
    // A materialized view.
    let rollup = psql(&stack, &agent, "SELECT s, n FROM rollup ORDER BY s").unwrap();
    assert_eq!(rollup, "****6789|1\n****7890|1\n****8901|1\n");
    // Columns derived from nothing masked pass.
    assert_eq!(psql(&stack, &agent, "SELECT name FROM plain WHERE id = 2").unwrap(), "Bob Chen\n");
    // The exempt see the values.
    let dba = stack.token("dora", &["dba"], None);
    assert_eq!(psql(&stack, &dba, "SELECT tax_id FROM contacts WHERE id = 1").unwrap(), "123-45-6789\n");
    // And a masked view column cannot be stored where it would read back
    // unmasked, by a caller whose rules allow the DDL itself.
    let builder = stack.token("bo", &["builders"], None);
    let err = psql(&stack, &builder, "CREATE TABLE public.copy AS SELECT tax_id FROM contacts").unwrap_err();
    assert!(err.contains("masked data may not be copied"), "{err}");
    assert_eq!(psql(&stack, &builder, "CREATE TABLE public.names AS SELECT name FROM plain").unwrap(), "SELECT 3\n");

    // The extended protocol (tokio-postgres) masks what the server reports as the view's column.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = stack.connect_as("alice", &["ai-agents"], Some("copilot")).await;
        let row = client.query_one("SELECT tax_id FROM contacts WHERE id = $1", &[&2i32]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "****7890");
        let row = client.query_one("SELECT t FROM public.nested WHERE t LIKE $1", &[&"%8901"]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "****8901");
        let err = client.query("SELECT * FROM leak", &[]).await.unwrap_err();
        assert!(!format!("{err:?}").contains("AKIA"));
    });
}

/// Any value, as the bytes the server sent (binary `jsonb` included).
struct Raw(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Raw, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// Whole rows written as JSON come back as JSON with only the masked
/// members changed, in text (psql) and in binary `jsonb` (tokio-postgres);
/// whole rows as composites come back as records with only the masked
/// fields changed (the table's fields named by the catalog), in text and
/// in binary.
#[test]
fn whole_rows_as_json_and_composites_are_masked_field_by_field() {
    let stack = stack("", "1h");
    let agent = stack.token("alice", &["ai-agents"], Some("copilot"));
    let json = |sql: &str| -> serde_json::Value {
        let out = psql(&stack, &agent, sql).unwrap();
        serde_json::from_str(out.trim_end()).unwrap_or_else(|e| panic!("{sql}: not JSON ({e}): {out}"))
    };
    let alice = serde_json::json!({
        "id": 1, "name": "Alice Martin", "email": "alice@example.com", "ssn": "****6789",
        "card": "4111 1111 1111 1111", "note": "prefers e-mail"
    });
    assert_eq!(json("SELECT row_to_json(c) FROM customers c WHERE id = 1"), alice);
    assert_eq!(json("SELECT to_jsonb(c.*) FROM customers c WHERE id = 1"), alice);
    assert_eq!(json("SELECT to_json(c)::text FROM customers c WHERE id = 1"), alice);
    let all = json("SELECT json_agg(c ORDER BY c.id) FROM customers c");
    let ssns: Vec<&str> = all.as_array().unwrap().iter().map(|r| r["ssn"].as_str().unwrap()).collect();
    assert_eq!(ssns, ["****6789", "****7890", "****8901"]);
    assert_eq!(all[1]["name"], "Bob Chen");
    // Through a view that renames the column, and a subquery that computes one.
    assert_eq!(
        json("SELECT to_json(v) FROM contacts v WHERE id = 1"),
        serde_json::json!({"id": 1, "tax_id": "****6789", "name": "Alice Martin"})
    );
    assert_eq!(
        json("SELECT to_json(s) FROM (SELECT id, upper(ssn) AS u FROM customers WHERE id = 2) s"),
        serde_json::json!({"id": 2, "u": "[redacted]"})
    );
    // Rows of tables and views no mask reaches are as the server wrote them.
    assert_eq!(
        psql(&stack, &agent, "SELECT to_json(p) FROM plain p WHERE id = 3").unwrap(),
        "{\"id\":3,\"name\":\"Carol Diaz\"}\n"
    );
    // The exempt see the values.
    let dba = stack.token("dora", &["dba"], None);
    let out = psql(&stack, &dba, "SELECT row_to_json(c) FROM customers c WHERE id = 1").unwrap();
    assert!(out.contains("123-45-6789"), "{out}");

    // Composites: field by field, by the fields the catalog names.
    let composite = "(1,\"Alice Martin\",alice@example.com,****6789,\"4111 1111 1111 1111\",\"prefers e-mail\")\n";
    assert_eq!(psql(&stack, &agent, "SELECT c FROM customers c WHERE id = 1").unwrap(), composite);
    assert_eq!(psql(&stack, &agent, "SELECT c::text FROM customers c WHERE id = 1").unwrap(), composite);
    assert_eq!(psql(&stack, &agent, "SELECT ROW(c.*) FROM customers c WHERE id = 1").unwrap(), composite);
    assert_eq!(
        psql(&stack, &agent, "SELECT v FROM contacts v WHERE id = 2").unwrap(),
        "(2,****7890,\"Bob Chen\")\n",
        "a view's row, by the view's columns"
    );
    assert_eq!(
        psql(&stack, &agent, "SELECT s FROM (SELECT id, lower(ssn) FROM customers WHERE id = 3) s").unwrap(),
        "(3,[redacted])\n"
    );

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = stack.connect_as("alice", &["ai-agents"], Some("copilot")).await;
        // A composite in binary (tokio-postgres asks for binary results).
        let row = client.query_one("SELECT c FROM customers c WHERE id = $1", &[&2i32]).await.unwrap();
        let Raw(record) = row.get(0);
        assert!(record.windows(8).any(|w| w == b"****7890"), "{record:?}");
        assert!(!record.windows(6).any(|w| w == b"234-56"), "{record:?}");
        let row = client.query_one("SELECT to_jsonb(c) FROM customers c WHERE id = $1", &[&1i32]).await.unwrap();
        let Raw(bytes) = row.get(0);
        assert_eq!(row.columns()[0].type_(), &tokio_postgres::types::Type::JSONB, "the column keeps its type");
        assert_eq!(bytes.first(), Some(&1), "binary jsonb starts with its version");
        let value: serde_json::Value = serde_json::from_slice(&bytes[1..]).unwrap();
        assert_eq!(value, alice);
    });
}

#[test]
fn views_name_judges_the_view_as_named() {
    let stack = stack("views = \"name\"", "1h");
    let agent = stack.token("alice", &["ai-agents"], None);
    // The policy grants public.* by name: the view is granted, as the policy says.
    assert_eq!(psql(&stack, &agent, "SELECT api_key FROM leak").unwrap(), "AKIAIOSFODNN7EXAMPLE\n");
    assert_eq!(psql(&stack, &agent, "SELECT tax_id FROM contacts WHERE id = 1").unwrap(), "123-45-6789\n");
}

#[test]
fn views_changed_through_the_gateway_are_seen_by_the_next_statement() {
    // No timed refresh: only DDL forwarded by the gateway reads the views again.
    let stack = stack("", "1h");
    let agent = stack.token("alice", &["ai-agents"], None);
    let dba = stack.token("dora", &["dba"], None);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // The agent's session is open before the view exists.
        let client = stack.connect_as("alice", &["ai-agents"], None).await;
        assert!(client.simple_query("SELECT * FROM fresh").await.is_err(), "no such relation yet");
        psql(&stack, &dba, "CREATE VIEW public.fresh AS SELECT id AS n, api_key AS note FROM secrets").unwrap();
        let err = client.simple_query("SELECT note FROM fresh").await.unwrap_err();
        assert!(format!("{err:?}").contains("secrets are not for agents"), "{err:?}");
        // Replaced by a view over allowed data: allowed again.
        psql(&stack, &dba, "CREATE OR REPLACE VIEW public.fresh AS SELECT id AS n, name AS note FROM customers")
            .unwrap();
        let rows = client.simple_query("SELECT note FROM fresh WHERE n = 1").await.unwrap();
        assert_eq!(values(&rows), ["Alice Martin"]);
        // A statement prepared before the view changes is judged again.
        let prepared = client.prepare("SELECT note FROM fresh WHERE n = 1").await.unwrap();
        assert_eq!(client.query(&prepared, &[]).await.unwrap().len(), 1);
        psql(&stack, &dba, "CREATE OR REPLACE VIEW public.fresh AS SELECT id AS n, api_key AS note FROM secrets")
            .unwrap();
        let err = client.query(&prepared, &[]).await.unwrap_err();
        assert!(format!("{err:?}").contains("secrets are not for agents"), "{err:?}");
    });
    // In one string, a statement after a CREATE VIEW is not judged by the catalog from before it.
    let builder = stack.token("bo", &["builders"], None);
    let err = psql(&stack, &builder, "CREATE VIEW public.later AS SELECT 1 AS one; SELECT * FROM later").unwrap_err();
    assert!(err.contains("on its own"), "{err}");
    // Each on its own is judged with the views read again in between.
    assert_eq!(psql(&stack, &builder, "CREATE VIEW public.later AS SELECT 1 AS one").unwrap(), "CREATE VIEW\n");
    assert_eq!(psql(&stack, &builder, "SELECT * FROM later").unwrap(), "1\n");
    assert_eq!(psql(&stack, &agent, "SELECT * FROM later").unwrap(), "1\n");
}

/// The server runs a table's rules and triggers with the statements that
/// write it, and its row security policies with every statement that
/// touches it: what they read and write is judged with the statement.
#[test]
fn rules_and_row_security_policies_are_judged_with_the_statement() {
    let stack = stack("", "1h");
    let agent = stack.token("alice", &["ai-agents"], None);
    let writer = stack.token("wes", &["writers"], None);
    // The policy reads secrets: whether a note shows tells about an api_key.
    let err = psql(&stack, &agent, "SELECT body FROM notes").unwrap_err();
    assert!(err.contains("secrets are not for agents"), "{err}");
    // The rule deletes from secrets.
    let err = psql(&stack, &writer, "INSERT INTO drafts VALUES (1)").unwrap_err();
    assert!(err.contains("secrets are not for agents"), "{err}");
    let dba = stack.token("dora", &["dba"], None);
    assert_eq!(psql(&stack, &dba, "SELECT count(*) FROM secrets").unwrap(), "1\n");
    // Reading the table does not run its rules.
    assert_eq!(psql(&stack, &writer, "SELECT count(*) FROM drafts").unwrap(), "0\n");
    // A trigger runs plpgsql the engine cannot see: the write is opaque.
    let err = psql(&stack, &writer, "INSERT INTO stamped VALUES (1)").unwrap_err();
    assert!(err.contains("a trigger on public.stamped runs public.stamp"), "{err}");
    assert_eq!(psql(&stack, &writer, "SELECT count(*) FROM stamped").unwrap(), "0\n");
}

/// The gateway reads the catalog on a connection of its own, which sees a
/// transaction's changes only once it commits: a view created or changed
/// in a transaction cannot be judged (nor its columns masked) until it
/// ends, and the statements that name a relation in between are refused.
/// Nor does a catalog read wait on the locks a transaction holds.
#[test]
fn views_changed_in_a_transaction_are_judged_once_it_ends() {
    let stack = stack("", "1h");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let limit = Duration::from_secs(60);
    rt.block_on(async {
        let builder = stack.connect_as("bo", &["builders"], None).await;
        builder.simple_query("BEGIN").await.unwrap();
        builder
            .simple_query(
                "CREATE FUNCTION public.tx_tax(int) RETURNS text LANGUAGE sql \
                 AS $$ SELECT ssn FROM customers WHERE id = $1 $$",
            )
            .await
            .unwrap();
        // Uncommitted, the function is not in the catalog the gateway
        // reads: what it returns could not be traced to the ssn.
        let err = builder.simple_query("SELECT public.tx_tax(1)").await.unwrap_err();
        assert!(format!("{err:?}").contains("its body is not visible"), "{err:?}");
        assert!(!format!("{err:?}").contains("6789"), "{err:?}");
        builder.simple_query("ROLLBACK").await.unwrap();
        builder.simple_query("BEGIN").await.unwrap();
        builder.simple_query("CREATE VIEW public.tx_names AS SELECT id, name AS n FROM customers").await.unwrap();
        assert_eq!(values(&builder.simple_query("SELECT 1").await.unwrap()), ["1"]);
        let err = builder.simple_query("SELECT n FROM tx_names WHERE id = 1").await.unwrap_err();
        assert!(format!("{err:?}").contains("COMMIT or ROLLBACK first"), "{err:?}");
        builder.simple_query("ROLLBACK").await.unwrap();
        builder.simple_query("BEGIN").await.unwrap();
        builder.simple_query("CREATE VIEW public.tx_names AS SELECT id, name AS n FROM customers").await.unwrap();
        builder.simple_query("COMMIT").await.unwrap();
        let rows = builder.simple_query("SELECT n FROM tx_names WHERE id = 1").await.unwrap();
        assert_eq!(values(&rows), ["Alice Martin"]);

        // A view dropped in a transaction is locked until it ends; the
        // gateway does not read the catalog under that lock (its own
        // session would wait for itself).
        builder.simple_query("BEGIN").await.unwrap();
        let dropped = tokio::time::timeout(limit, builder.simple_query("DROP VIEW public.nested")).await;
        dropped.expect("DROP VIEW in a transaction never answered").unwrap();
        let one = tokio::time::timeout(limit, builder.simple_query("SELECT 1")).await;
        assert_eq!(values(&one.expect("the statement after DROP VIEW never answered").unwrap()), ["1"]);
        // Other sessions go on with the views as committed.
        let agent = stack.connect_as("alice", &["ai-agents"], None).await;
        let rows = agent.simple_query("SELECT name FROM plain WHERE id = 1").await.unwrap();
        assert_eq!(values(&rows), ["Alice Martin"]);
        // Another session's schema change reads the catalog meanwhile: the
        // read gives up on the lock (the views are unavailable, so an
        // agent's statements on relations are refused) rather than wait.
        let dba = stack.connect_as("dora", &["dba"], None).await;
        let ddl =
            tokio::time::timeout(limit, dba.simple_query("CREATE VIEW public.meanwhile AS SELECT 1 AS one")).await;
        ddl.expect("a schema change waited on another transaction's lock").unwrap();
        // The next statement on that session comes after the catalog read.
        tokio::time::timeout(limit, dba.simple_query("SELECT 1")).await.expect("the catalog read never ended").unwrap();
        let err = agent.simple_query("SELECT name FROM plain WHERE id = 1").await.unwrap_err();
        let err = format!("{err:?}");
        assert!(err.contains("could not be read") && err.contains("answered with an error: 55P03"), "{err}");
        // Once the transaction ends, the catalog is read again.
        builder.simple_query("ROLLBACK").await.unwrap();
        let rows = agent.simple_query("SELECT name FROM plain WHERE id = 1").await.unwrap();
        assert_eq!(values(&rows), ["Alice Martin"]);
        let rows = agent.simple_query("SELECT t FROM nested ORDER BY t LIMIT 1").await.unwrap();
        assert_eq!(values(&rows), ["****6789"]);
    });
}

#[test]
fn views_changed_by_other_connections_are_seen_within_the_refresh_interval() {
    let stack = stack("", "200ms");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = stack.connect_as("alice", &["ai-agents"], None).await;
        let rows = client.simple_query("SELECT name FROM plain WHERE id = 1").await.unwrap();
        assert_eq!(values(&rows), ["Alice Martin"]);
        // The owner turns an allowed view into one over the secrets, behind the gateway's back.
        stack.owner_sql("CREATE OR REPLACE VIEW public.plain AS SELECT id, api_key AS name FROM secrets");
        let start = Instant::now();
        loop {
            match client.simple_query("SELECT name FROM plain WHERE id = 1").await {
                Err(e) => {
                    assert!(format!("{e:?}").contains("secrets are not for agents"), "{e:?}");
                    break;
                }
                Ok(_) => assert!(start.elapsed() < Duration::from_secs(30), "the change was never seen"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Renaming a view is a change too.
        stack.owner_sql("ALTER VIEW public.leak RENAME TO harmless");
        let start = Instant::now();
        while client.simple_query("SELECT * FROM harmless").await.is_ok()
            || start.elapsed() < Duration::from_millis(500)
        {
            assert!(start.elapsed() < Duration::from_secs(30), "the rename was never seen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let err = client.simple_query("SELECT * FROM harmless").await.unwrap_err();
        assert!(format!("{err:?}").contains("secrets are not for agents"), "{err:?}");
        // A function's body replaced is a change too.
        assert_eq!(values(&client.simple_query("SELECT n_customers()").await.unwrap()), ["3"]);
        stack.owner_sql(
            "CREATE OR REPLACE FUNCTION public.n_customers() RETURNS bigint LANGUAGE sql \
             AS $$ SELECT count(*) FROM secrets $$",
        );
        let start = Instant::now();
        while client.simple_query("SELECT n_customers()").await.is_ok() {
            assert!(start.elapsed() < Duration::from_secs(30), "the new body was never seen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// `pg-proxy policy explain --catalog` reads the views as the gateway does,
/// and says so when it cannot.
#[test]
fn policy_explain_reads_the_views_from_the_catalog() {
    let stack = stack("", "1h");
    let policy = stack.path("policy.toml");
    let conninfo = format!("host=127.0.0.1 port={} user=app dbname=app sslmode=disable", stack.cluster.port());
    let explain = |catalog: Option<&str>| {
        let mut cmd = bin!();
        cmd.args(["policy", "explain", "--policy"]).arg(&policy).args(["--groups", "ai-agents"]);
        if let Some(c) = catalog {
            cmd.args(["--catalog", c]);
        }
        cmd.arg("SELECT k FROM leak_twice").env("PGPASSWORD", APP_PASSWORD).output().unwrap()
    };
    let out = explain(Some(&conninfo));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    assert!(json.contains("\"verdict\": \"deny\""), "{json}");
    assert!(json.contains("public.secrets") && json.contains("public.leak"), "{json}");
    // Without the catalog: by name, as an embedding without views judges.
    let json = text(&explain(None).stdout);
    assert!(json.contains("\"verdict\": \"allow\""), "{json}");
    // A catalog that cannot be read is an error, not a judgement by name.
    let wrong = format!("host=127.0.0.1 port={} user=nobody dbname=app sslmode=disable", stack.cluster.port());
    let out = explain(Some(&wrong));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read the views of database app"), "{}", text(&out.stderr));
    let out = explain(Some("postgresql://app@127.0.0.1/app"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not a URI"), "{}", text(&out.stderr));
}

/// A SQL function whose body sets `search_path`: the gateway reads the
/// path back after the call, so the next statement is judged with the path
/// the server now uses (here a schema the policy does not grant), and the
/// rest of the same string with both paths.
#[test]
fn a_function_that_sets_search_path_is_followed() {
    let setup = format!(
        "{VIEWS}
CREATE SCHEMA private;
CREATE TABLE private.orders (secret text);
INSERT INTO private.orders VALUES ('PRIVATE-ORDER');
CREATE FUNCTION public.switch_path() RETURNS text LANGUAGE sql AS $$ SELECT set_config('search_path', 'private', false) $$;
"
    );
    let stack = Stack::builder()
        .policy(&POLICY.replace("VIEWS", ""))
        .config("[catalog]\nrefresh_interval = \"1h\"")
        .setup_sql(&setup)
        .start();
    let agent = stack.token("alice", &["ai-agents"], None);
    for args in [
        vec!["-At", "-c", "SELECT switch_path()", "-c", "SELECT * FROM orders"],
        vec!["-At", "-c", "SELECT switch_path(); SELECT * FROM orders"],
    ] {
        let out = stack.psql(&agent, &args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(!stdout.contains("PRIVATE-ORDER"), "{args:?}: {stdout}");
        assert!(stderr.contains("refused by policy"), "{args:?}: {stderr}");
    }
}
