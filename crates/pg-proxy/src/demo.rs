//! `pg-proxy demo`: the whole product on one machine, in one command.
//!
//! It starts a throwaway PostgreSQL cluster (initdb and pg_ctl on a free
//! loopback port, in a temporary directory; as an unprivileged user when
//! run as root), loads a small shop with planted PII (`examples/demo.sql`),
//! writes a development key pair, mints tokens for a person (`alice`, group
//! `developers`) and for an agent acting for her (`copilot-cli`, group
//! `ai-agents`), starts the gateway with the policy, and prints the psql
//! command lines for both. Ctrl-C stops everything and removes the
//! directory.
//!
//! It also starts the admin server (the approvals inbox and API) and mints
//! a token for an approver (`bob`, group `dba`).
//!
//! With `--script`, it then plays a short agent session through the
//! gateway (an allowed read with masked columns, a refused `DROP TABLE`, a
//! refused unbounded `DELETE`, a bulk read stopped by the row cap, and a
//! `DELETE` held until bob approves it through the admin API), shows
//! the session as the audit log recorded it (`pg-proxy audit replay`) and
//! the log's verification (`pg-proxy audit verify`), and exits.
//!
//! The gateway records every session in an audit log: in the temporary
//! directory, or in `--audit-dir`, which is kept (with its signing key).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_postgres::SimpleQueryMessage;

use crate::cluster::{Cluster, ClusterOptions};
use crate::config::Config;
use crate::server::Gateway;
use crate::token::{self, KeyType, MintRequest};

/// `println!` for the demo's narrative, which is for a person: when no one
/// reads it any more (the terminal closed, and the hangup stops the demo),
/// the demo goes on stopping cleanly rather than failing on the write.
macro_rules! tell {
    () => {
        tell_raw("\n")
    };
    ($($arg:tt)*) => {
        tell_raw(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes `text` to standard output; a failed write is ignored (see
/// `tell!`).
fn tell_raw(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// The sample schema.
pub const DEMO_SQL: &str = include_str!("../../../examples/demo.sql");
/// The example policy, used when no policy file is given and
/// `examples/policy.toml` is not in the working directory.
pub const EXAMPLE_POLICY: &str = include_str!("../../../examples/policy.toml");

/// Options of `pg-proxy demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The policy file; `None`: `examples/policy.toml` if present, else the
    /// built-in copy of it.
    pub policy: Option<PathBuf>,
    /// The gateway's port (0: any free port).
    pub port: u16,
    /// The admin server's port (0: any free port).
    pub admin_port: u16,
    /// Play the scripted agent session, then exit.
    pub script: bool,
    /// Keep the audit log (and its signing key) in this directory.
    pub audit_dir: Option<PathBuf>,
}

/// Runs the demo; returns when the script is done, or on Ctrl-C, SIGTERM
/// or SIGHUP (the cluster and its files removed in every case).
pub async fn run(options: DemoOptions) -> Result<(), String> {
    // Listening from the start: a signal while the cluster starts stops the
    // demo rather than killing it and leaving the cluster behind.
    let stop = stopped()?;
    tell!("Portcullis demo: starting a throwaway PostgreSQL cluster...");
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(&ClusterOptions::default()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let result = run_with(&cluster, &options, stop).await;
    tell!("Stopping PostgreSQL and removing {} ...", cluster.dir().display());
    tokio::task::spawn_blocking(move || cluster.stop()).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    result
}

const APP_USER: &str = "app";

async fn run_with(
    cluster: &Cluster,
    options: &DemoOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let app_password = random_password();
    cluster.create_role(APP_USER, &app_password, false).map_err(|e| e.to_string())?;
    cluster.create_database("app", APP_USER).map_err(|e| e.to_string())?;
    load_schema(cluster, &app_password).await?;

    let dir = cluster.dir().join("gateway");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (key, _jwks) = token::keygen(&dir.join("keys"), KeyType::Ed25519)?;
    let policy_path = match &options.policy {
        Some(p) => std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None if Path::new("examples/policy.toml").is_file() => {
            std::fs::canonicalize("examples/policy.toml").map_err(|e| format!("examples/policy.toml: {e}"))?
        }
        None => {
            let p = dir.join("policy.toml");
            std::fs::write(&p, EXAMPLE_POLICY).map_err(|e| format!("{}: {e}", p.display()))?;
            p
        }
    };
    write_private(&dir.join("upstream-password"), &app_password)?;
    let audit_dir = match &options.audit_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            std::fs::canonicalize(d).map_err(|e| format!("{}: {e}", d.display()))?
        }
        None => dir.join("audit"),
    };
    let audit_key = audit_key(&audit_dir)?;
    let admin_listener = TcpListener::bind(("127.0.0.1", options.admin_port))
        .await
        .map_err(|e| format!("listening on 127.0.0.1:{}: {e}", options.admin_port))?;
    let admin = admin_listener.local_addr().map_err(|e| e.to_string())?;
    let config_text = format!(
        "listen = \"127.0.0.1:{port}\"\npolicy = {policy:?}\n\n[auth]\njwks_file = \"keys/jwks.json\"\n\n\
         [upstream]\nhost = \"127.0.0.1\"\nport = {upstream}\nuser = \"{APP_USER}\"\n\
         password_file = \"upstream-password\"\ntls = \"disable\"\n\n\
         [audit]\ndir = {audit:?}\nsigning_key_file = {key:?}\n\n[admin]\nlisten = \"{admin}\"\n",
        port = options.port,
        policy = policy_path.display().to_string(),
        upstream = cluster.port(),
        audit = audit_dir.display().to_string(),
        key = audit_key.display().to_string(),
    );
    let config_path = dir.join("gateway.toml");
    std::fs::write(&config_path, config_text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let config = Config::load(&config_path).map_err(|e| e.to_string())?;
    let gateway = Arc::new(Gateway::new(config)?);
    let listener = TcpListener::bind(("127.0.0.1", options.port))
        .await
        .map_err(|e| format!("listening on 127.0.0.1:{}: {e}", options.port))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let server = tokio::spawn(Arc::clone(&gateway).serve(listener));
    let store = gateway.approvals.clone().ok_or("approvals are off, though [admin] is set")?;
    let admin_server = tokio::spawn(crate::admin::serve(admin_listener, Arc::clone(&gateway), Arc::clone(&store)));

    let person = mint(&key, "alice", &["developers"], None)?;
    let agent = mint(&key, "alice", &["ai-agents"], Some("copilot-cli"))?;
    let approver = mint(&key, "bob", &["dba"], None)?;
    let person_file = dir.join("alice.token");
    let agent_file = dir.join("agent.token");
    let approver_file = dir.join("bob.token");
    write_private(&person_file, &person)?;
    write_private(&agent_file, &agent)?;
    write_private(&approver_file, &approver)?;
    let conninfo = format!("host=127.0.0.1 port={port} user=alice dbname=app sslmode=disable");

    tell!();
    tell!("  PostgreSQL   127.0.0.1:{} (data in {})", cluster.port(), cluster.data_dir().display());
    tell!("  sample data  customers (names, e-mails, SSNs, card numbers), orders (5000 rows), secrets");
    tell!("  gateway      127.0.0.1:{port}, policy {}", policy_path.display());
    tell!("  audit log    {}", audit_dir.display());
    tell!();
    tell!("Connect as the person (alice, group developers):");
    tell!("  PGPASSWORD=\"$(cat {})\" psql \"{conninfo}\"", person_file.display());
    tell!("Connect as the agent acting for alice (copilot-cli, group ai-agents):");
    tell!("  PGPASSWORD=\"$(cat {})\" psql \"{conninfo}\"", agent_file.display());
    tell!("Approve what the agent's deletes wait for, as bob (group dba): open http://{admin}/ and paste");
    tell!("the token in {}, or:", approver_file.display());
    tell!(
        "  PORTCULLIS_ADMIN=http://{admin} PORTCULLIS_TOKEN=\"$(cat {})\" pg-proxy approvals list",
        approver_file.display()
    );
    tell!();

    let outcome = if options.script {
        let approval = Approval { store: &store, admin: format!("http://{admin}"), approver: &approver };
        tokio::select! {
            played = play_script(&gateway, &conninfo, &agent, &approval) => played,
            () = stop => Err("stopped by a signal".to_string()),
        }
    } else {
        tell!("Press Ctrl-C to stop and remove everything.");
        stop.await;
        Ok(())
    };
    server.abort();
    admin_server.abort();
    if let Some(audit) = gateway.audit.clone() {
        // The sessions' last records, then the closing checkpoint.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let _ = tokio::task::spawn_blocking(move || audit.close()).await;
    }
    if options.script && outcome.is_ok() {
        show_audit(&audit_dir).await?;
        tell!();
        tell!(
            "Done. Run `scripts/demo` (or `pg-proxy demo`, once installed) without --script to try it yourself with \
             psql."
        );
    }
    if options.audit_dir.is_some() {
        tell!("The audit log is kept in {}.", audit_dir.display());
    }
    outcome
}

/// Listens for Ctrl-C, SIGTERM and SIGHUP (`timeout`, a service manager,
/// a closed terminal), and waits for the first: each stops the demo the
/// same way, so its cluster and files are removed whichever ends it.
fn stopped() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP handler: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            _ = hangup.recv() => {}
        }
    })
}

/// The audit log's signing key in `dir` (`audit-key.pem`, with
/// `audit-key.pub` beside it), made when missing.
fn audit_key(dir: &Path) -> Result<PathBuf, String> {
    let key = dir.join(crate::audit::KEY_FILE);
    if key.is_file() {
        return Ok(key);
    }
    crate::audit::keygen(dir, "portcullis").map(|(key, _)| key)
}

/// Shows the agent's session as recorded, and the log's verification, by
/// running `pg-proxy audit replay` and `pg-proxy audit verify`.
async fn show_audit(dir: &Path) -> Result<(), String> {
    let records = crate::audit::read_records(dir)?;
    let Some(session) = records
        .iter()
        .rev()
        .find(|r| r["type"] == "session_start" && r["actor"] == "copilot-cli")
        .and_then(|r| r["session"].as_str())
        .map(str::to_string)
    else {
        return Err("the agent's session is not in the audit log".into());
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let key = dir.join("audit-key.pub");
    let runs: [(&str, Vec<std::ffi::OsString>); 2] = [
        ("replay", vec!["audit".into(), "replay".into(), "--session".into(), session.into(), dir.into()]),
        ("verify", vec!["audit".into(), "verify".into(), "--key".into(), key.into(), dir.into()]),
    ];
    tell!();
    tell!("-- the audit log: the agent's session as recorded, and the log verified");
    for (_, args) in runs {
        let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        tell!("$ pg-proxy {}", shown.join(" "));
        let status = tokio::process::Command::new(&exe)
            .args(&args)
            .status()
            .await
            .map_err(|e| format!("running {}: {e}", exe.display()))?;
        if !status.success() {
            return Err(format!("pg-proxy {} exited with {status}", shown.join(" ")));
        }
    }
    Ok(())
}

async fn load_schema(cluster: &Cluster, password: &str) -> Result<(), String> {
    let conninfo = format!("host=127.0.0.1 port={} user={APP_USER} dbname=app password={password}", cluster.port());
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("loading the schema: {e}"))?;
    let task = tokio::spawn(connection);
    client.batch_execute(DEMO_SQL).await.map_err(|e| format!("loading the schema: {e}"))?;
    drop(client);
    let _ = task.await;
    Ok(())
}

fn mint(key: &Path, subject: &str, groups: &[&str], actor: Option<&str>) -> Result<String, String> {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    token::mint(&MintRequest {
        key,
        subject,
        groups: &groups,
        actor,
        ttl_seconds: 12 * 3600,
        issuer: None,
        audience: None,
    })
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

fn random_password() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect()
}

/// The scripted agent session.
const SCRIPT: [(&str, &str); 4] = [
    ("an allowed read: masked columns", "SELECT id, name, email, ssn, card, note FROM customers ORDER BY id"),
    ("the agent tries to drop a table", "DROP TABLE customers"),
    ("the agent tries to delete every order", "DELETE FROM orders"),
    ("a bulk read: more rows than the agent's cap", "SELECT * FROM orders"),
];

async fn play_script(gateway: &Gateway, conninfo: &str, token: &str, approval: &Approval<'_>) -> Result<(), String> {
    tell!("Playing an agent session (copilot-cli acting for alice) through the gateway:");
    let conninfo = format!("{conninfo} password={token} application_name=copilot-cli");
    let (client, connection) =
        tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.map_err(|e| format!("connecting: {e}"))?;
    let task = tokio::spawn(connection);
    let engine = gateway.engine();
    let verified = gateway.verify_token(token).await.map_err(|e| e.to_string())?;
    for (what, sql) in SCRIPT {
        tell!();
        tell!("-- {what}");
        tell!("agent=> {sql};");
        let decision = engine.decide(&verified, &engine.new_session(), sql);
        match client.simple_query(sql).await {
            Ok(messages) => {
                let rule = decision.rule.as_deref().unwrap_or("-");
                tell!("   allowed (rule {rule})");
                tell_raw(&render(&messages));
            }
            Err(e) => match e.as_db_error() {
                Some(db) => tell!("   ERROR {}: {}", db.code().code(), db.message()),
                None => tell!("   ERROR {e}"),
            },
        }
    }
    let outcome = play_approval(&client, approval).await;
    drop(client);
    let _ = task.await;
    outcome
}

/// Who approves in the scripted session, and where.
struct Approval<'a> {
    store: &'a crate::approvals::store::ApprovalStore,
    admin: String,
    approver: &'a str,
}

/// The agent gives a reason and deletes one order; the statement waits on
/// its session until bob approves it through the admin API, then runs.
async fn play_approval(client: &tokio_postgres::Client, approval: &Approval<'_>) -> Result<(), String> {
    tell!();
    tell!("-- the agent deletes one order: the policy wants a person to approve it");
    let reason = "SET portcullis.reason = 'order 7 was a duplicate from the import'";
    tell!("agent=> {reason};");
    client.simple_query(reason).await.map_err(|e| format!("{reason}: {e}"))?;
    let sql = "DELETE FROM orders WHERE id = 7";
    tell!("agent=> {sql};");
    let (held, approved) = tokio::join!(client.simple_query(sql), approve_when_held(approval));
    approved?;
    match held {
        Ok(messages) => {
            for m in messages {
                if let SimpleQueryMessage::CommandComplete(rows) = m {
                    tell!("   DELETE {rows}: it ran once approved");
                }
            }
        }
        Err(e) => tell!("   ERROR {e}"),
    }
    Ok(())
}

/// Waits for the held request, then approves it as bob through the API.
async fn approve_when_held(approval: &Approval<'_>) -> Result<(), String> {
    let store = approval.store;
    let mut request = None;
    for _ in 0..200 {
        request = store.requests(true, std::time::SystemTime::now()).into_iter().next();
        if request.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let request = request.ok_or("the DELETE was not held for approval")?;
    let id = request.id.clone();
    tell!("   held: waiting for approval, request {id} (rule {})", request.rule.as_deref().unwrap_or("-"));
    tell!();
    tell!("-- bob (group dba) approves it: `pg-proxy approvals approve {id}`, or a click in the inbox");
    let url = format!("{}/api/v1/approvals/{id}/approve", approval.admin);
    let bearer = format!("Bearer {}", approval.approver);
    let answer = tokio::task::spawn_blocking(move || {
        let mut response = ureq::post(&url)
            .header("Authorization", &bearer)
            .header("Content-Type", "application/json")
            .send(r#"{"reason": "checked: a duplicate"}"#)
            .map_err(|e| format!("approving: {e}"))?;
        response.body_mut().read_to_string().map_err(|e| format!("approving: {e}"))
    })
    .await
    .map_err(|e| e.to_string())??;
    tell!("   {answer}");
    Ok(())
}

/// Rows as a small aligned table.
fn render(messages: &[SimpleQueryMessage]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<String> = Vec::new();
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                header = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                if header.is_empty() {
                    header = r.columns().iter().map(|c| c.name().to_string()).collect();
                }
                rows.push((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_string()).collect());
            }
            _ => {}
        }
    }
    if header.is_empty() {
        return String::new();
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, v) in widths.iter_mut().zip(row) {
            *w = (*w).max(v.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("   ");
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str(" | ");
            }
            let _ = write!(s, "{c:<w$}");
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header);
    out.push_str("   ");
    out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"));
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row));
    }
    let _ = writeln!(out, "   ({} rows)", rows.len());
    out
}
