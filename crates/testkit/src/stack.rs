//! A gateway in front of a throwaway PostgreSQL cluster.
//!
//! [`Stack::start`] (or a [`StackBuilder`]) starts a cluster, creates the
//! role `app` (password [`APP_PASSWORD`], owner of the database `app`,
//! loaded with `examples/demo.sql` and then any setup SQL, run as `app`),
//! writes a development key pair (`keys/` in the stack's directory, as
//! `pg-proxy token keygen` writes it), and runs the gateway in this
//! process, on its own runtime, on a free loopback port with the given
//! policy. Dropping the stack stops the gateway and removes the cluster.
//!
//! A test that holds its stack past [`STACK_LIMIT`] hangs: a [`Watchdog`]
//! armed with the stack then names it and ends the test binary, rather
//! than leave the suite waiting for the CI's own limit. The stack also
//! raises the test process's open-file limit ([`raise_open_files_limit`]).
//!
//! Tokens are minted with `pg_proxy::token`, as `pg-proxy token mint` mints
//! them, so the stack needs no `pg-proxy` binary and serves any crate's
//! tests.
//!
//! ```no_run
//! # async fn demo() {
//! use portcullis_testkit::stack::Stack;
//!
//! let stack = Stack::builder().setup_sql("CREATE SCHEMA private").start();
//! let client = stack.connect(&["ai-agents"]).await;
//! let refused = client.simple_query("SELECT * FROM secrets").await;
//! assert!(refused.is_err());
//! # }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use pg_proxy::cluster::{Cluster, ClusterOptions};
use pg_proxy::config::Config;
use pg_proxy::server::Gateway;
use pg_proxy::token::{KeyType, MintRequest};

use crate::process::Watchdog;
use crate::wire::{query, Raw};
use crate::{repo, text};

/// The password of `app`, the database's owner and the gateway's upstream
/// role.
pub const APP_PASSWORD: &str = "app-pw-for-tests";

/// How a [`Stack`] is made; [`StackBuilder::start`] makes it.
#[derive(Clone)]
pub struct StackBuilder {
    policy: Option<String>,
    config: String,
    cluster: ClusterOptions,
    upstream: String,
    setup: Vec<String>,
}

impl Default for StackBuilder {
    fn default() -> StackBuilder {
        StackBuilder {
            policy: None,
            config: String::new(),
            cluster: ClusterOptions::default(),
            upstream: "tls = \"disable\"".to_string(),
            setup: Vec::new(),
        }
    }
}

impl StackBuilder {
    /// The policy's text (default: `examples/policy.toml`).
    pub fn policy(mut self, policy: &str) -> StackBuilder {
        self.policy = Some(policy.to_string());
        self
    }

    /// Text appended to the gateway's configuration after `policy`, before
    /// `[auth]`: top-level keys and whole tables such as `[limits]`.
    pub fn config(mut self, extra: &str) -> StackBuilder {
        self.config = extra.to_string();
        self
    }

    /// The cluster's options.
    pub fn cluster(mut self, options: ClusterOptions) -> StackBuilder {
        self.cluster = options;
        self
    }

    /// More `[upstream]` keys, in place of the default `tls = "disable"`.
    pub fn upstream(mut self, extra: &str) -> StackBuilder {
        self.upstream = extra.to_string();
        self
    }

    /// SQL run as `app` in the database `app` after `examples/demo.sql`,
    /// before the gateway starts (each call adds a script, run in order).
    pub fn setup_sql(mut self, sql: &str) -> StackBuilder {
        self.setup.push(sql.to_string());
        self
    }

    /// Starts the cluster, loads it, and starts the gateway. Fails the test
    /// when any step fails.
    pub fn start(self) -> Stack {
        raise_open_files_limit();
        let policy = match self.policy {
            Some(p) => p,
            None => std::fs::read_to_string(repo("examples/policy.toml")).unwrap(),
        };
        let cluster = Cluster::start(&self.cluster).unwrap();
        // Should it go off, the cluster is stopped at once (its
        // postmaster's SIGQUIT), as the stack's drop would have.
        let postmaster_pid = cluster.data_dir().join("postmaster.pid");
        let watchdog = Watchdog::arm(STACK_LIMIT, move || {
            let pid = std::fs::read_to_string(&postmaster_pid).unwrap_or_default();
            if let Some(pid) = pid.lines().next().filter(|p| p.parse::<u32>().is_ok()) {
                let _ = Command::new("kill").args(["-s", "QUIT", pid]).status();
            }
        });
        cluster.create_role("app", APP_PASSWORD, false).unwrap();
        cluster.create_database("app", "app").unwrap();
        let demo = std::fs::read_to_string(repo("examples/demo.sql")).unwrap();
        owner_sql(&cluster, &demo).unwrap_or_else(|e| panic!("loading demo.sql: {e}"));
        for sql in &self.setup {
            owner_sql(&cluster, sql).unwrap_or_else(|e| panic!("setup SQL: {e}"));
        }

        let dir = cluster.dir().join("gateway");
        std::fs::create_dir_all(&dir).unwrap();
        pg_proxy::token::keygen(&dir.join("keys"), KeyType::Ed25519).unwrap_or_else(|e| panic!("keygen: {e}"));
        std::fs::write(dir.join("policy.toml"), policy).unwrap();
        std::fs::write(dir.join("upstream-password"), APP_PASSWORD).unwrap();
        let config_text = format!(
            "listen = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n{}\n[auth]\njwks_file = \"keys/jwks.json\"\n\
             [upstream]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"app\"\npassword_file = \"upstream-password\"\n\
             {}\n",
            self.config,
            cluster.port(),
            self.upstream,
        );
        std::fs::write(dir.join("gateway.toml"), &config_text).unwrap();
        let config = Config::load(&dir.join("gateway.toml")).unwrap();
        let gateway = Arc::new(Gateway::new(config).unwrap());
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let gw = Arc::clone(&gateway);
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = gw.serve(listener).await;
        });
        Stack { cluster, addr, dir, gateway, runtime: Some(runtime), _watchdog: watchdog }
    }
}

/// A PostgreSQL client program (`psql`, `pgbench`, ...) from the cluster's
/// binary directory, else from `PATH`.
fn client_program(cluster: &Cluster, name: &str) -> PathBuf {
    let local = cluster.bin_dir().join(name);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}

/// Runs `sql` with psql as `app` in the database `app`, directly on the
/// cluster; `Err` is psql's stderr.
fn owner_sql(cluster: &Cluster, sql: &str) -> Result<(), String> {
    let out = Command::new(client_program(cluster, "psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!("host=127.0.0.1 port={} user=app dbname=app", cluster.port()))
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .arg("-c")
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out.stderr))
    }
}

/// A cluster with the gateway in front of it; see the [module docs](self).
pub struct Stack {
    /// The PostgreSQL cluster (its superuser is the cluster's own).
    pub cluster: Cluster,
    /// Where the gateway listens (loopback).
    pub addr: SocketAddr,
    /// The gateway's directory: `gateway.toml`, `policy.toml`, `keys/`,
    /// `upstream-password`.
    pub dir: PathBuf,
    /// The gateway.
    pub gateway: Arc<Gateway>,
    runtime: Option<tokio::runtime::Runtime>,
    _watchdog: Watchdog,
}

impl Stack {
    /// A builder, for the options the shorthands below do not cover.
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// The stack with `examples/policy.toml`.
    pub fn start() -> Stack {
        Stack::builder().start()
    }

    /// The stack with this policy.
    pub fn with_policy(policy: &str) -> Stack {
        Stack::builder().policy(policy).start()
    }

    /// The stack with this policy; `extra` is appended to the gateway's
    /// configuration ([`StackBuilder::config`]).
    pub fn with(policy: &str, extra: &str) -> Stack {
        Stack::builder().policy(policy).config(extra).start()
    }

    /// The full form: the cluster's options, and extra `[upstream]` keys.
    pub fn with_cluster(policy: &str, extra: &str, options: &ClusterOptions, upstream_extra: &str) -> Stack {
        Stack::builder().policy(policy).config(extra).cluster(options.clone()).upstream(upstream_extra).start()
    }

    /// Serves the same gateway on another address too (port chosen freely).
    pub fn listen_also(&self, ip: &str) -> SocketAddr {
        self.serve_gateway(Arc::clone(&self.gateway), ip)
    }

    /// Another gateway in this process, on a loopback port of its own: the
    /// stack's `gateway.toml` as `edit` changes it, written as `name` in
    /// the gateway's directory (its relative paths still hold) and loaded.
    /// For a gateway whose upstream or key source differs from the
    /// stack's. Loading it may fetch a key set over the network: call it
    /// from a test's body, not from a task of its runtime.
    ///
    /// ```no_run
    /// # let stack = portcullis_testkit::stack::Stack::start();
    /// let addr = stack.another_gateway("short-logins.toml", |config| {
    ///     format!("{config}\n[limits]\nlogin_timeout = \"1s\"\n")
    /// });
    /// ```
    pub fn another_gateway(&self, name: &str, edit: impl FnOnce(&str) -> String) -> SocketAddr {
        let text = std::fs::read_to_string(self.path("gateway.toml")).unwrap();
        let path = self.path(name);
        std::fs::write(&path, edit(&text)).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let gateway = Gateway::new(config).unwrap_or_else(|e| panic!("{name}: {e}"));
        self.serve_gateway(Arc::new(gateway), "127.0.0.1")
    }

    /// Serves `gateway` on `ip`, a port chosen freely, on the stack's
    /// runtime.
    fn serve_gateway(&self, gateway: Arc<Gateway>, ip: &str) -> SocketAddr {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        self.runtime.as_ref().unwrap().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = gateway.serve(listener).await;
        });
        addr
    }

    /// The private key tokens are signed with.
    pub fn key(&self) -> PathBuf {
        self.dir.join("keys/signing-key.pem")
    }

    /// A development token for `subject` in `groups`, optionally for an
    /// agent acting for them, valid for an hour (what `pg-proxy token mint
    /// --key KEY --sub SUBJECT --groups G,H [--actor A]` prints).
    pub fn token(&self, subject: &str, groups: &[&str], actor: Option<&str>) -> String {
        let groups: Vec<String> = groups.iter().filter(|g| !g.is_empty()).map(|g| g.to_string()).collect();
        let key = self.key();
        let request =
            MintRequest { key: &key, subject, groups: &groups, actor, ttl_seconds: 3600, issuer: None, audience: None };
        pg_proxy::token::mint(&request).unwrap_or_else(|e| panic!("minting a token: {e}"))
    }

    /// An agent (alice, for `copilot-7`) that logs in over a small
    /// receive window ([`Raw::connect_small_window`]), sends a statement
    /// with a 36 MB result and `then` in one write, and reads nothing
    /// more: the gateway's writes to it stall on the first result, with
    /// `then` read and on its way. The caller reads (or not) from there.
    pub async fn agent_stalled_after_a_large_result(&self, then: &str) -> Raw<tokio::net::TcpStream> {
        let mut raw = Raw::connect_small_window(self.addr, "a client that stops reading").await;
        let token = self.token("alice", &["ai-agents"], Some("copilot-7"));
        raw.login(&[("user", "agent"), ("database", "app")], &token)
            .await
            .unwrap_or_else(|e| panic!("login refused: {e:?}"));
        let mut both = query("SELECT repeat('x', 40000) FROM generate_series(1, 900)");
        both.extend(query(then));
        raw.send(&both).await;
        raw
    }

    /// A libpq connection string to the gateway.
    pub fn conninfo(&self, token: &str) -> String {
        format!("host=127.0.0.1 port={} user=agent dbname=app password={token} sslmode=disable", self.addr.port())
    }

    /// A tokio-postgres client through the gateway, as `alice` in `groups`.
    pub async fn connect(&self, groups: &[&str]) -> tokio_postgres::Client {
        self.connect_as("alice", groups, None).await
    }

    /// A tokio-postgres client through the gateway with a token for
    /// `subject` in `groups`, optionally for an agent acting for them.
    pub async fn connect_as(&self, subject: &str, groups: &[&str], actor: Option<&str>) -> tokio_postgres::Client {
        let token = self.token(subject, groups, actor);
        let (client, connection) =
            tokio_postgres::connect(&self.conninfo(&token), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// A PostgreSQL client program (`psql`, `pgbench`, ...) from the
    /// cluster's binary directory, else from `PATH`.
    pub fn program(&self, name: &str) -> Command {
        Command::new(client_program(&self.cluster, name))
    }

    /// Runs psql against the gateway with `args` after the connection.
    pub fn psql(&self, token: &str, args: &[&str]) -> Output {
        self.program("psql")
            .args(["-X", "-d"])
            .arg(format!("host=127.0.0.1 port={} user=agent dbname=app sslmode=disable", self.addr.port()))
            .env("PGPASSWORD", token)
            .args(args)
            .output()
            .unwrap()
    }

    /// Loads pgbench's tables at `scale` into the database `app`, directly
    /// on the cluster. Fails the test when pgbench fails.
    pub fn pgbench_init(&self, scale: u32) {
        let out = self
            .program("pgbench")
            .args(["-i", "-s", &scale.to_string(), "-q", "-h", "127.0.0.1", "-p"])
            .arg(self.cluster.port().to_string())
            .args(["-U", "app", "app"])
            .env("PGPASSWORD", APP_PASSWORD)
            .output()
            .unwrap();
        assert!(out.status.success(), "pgbench -i: {}", text(&out.stderr));
    }

    /// Runs `sql` with psql as `app` in the database `app`, directly on the
    /// cluster (not through the gateway). Fails the test when psql fails.
    pub fn owner_sql(&self, sql: &str) {
        owner_sql(&self.cluster, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A tokio-postgres client as `user` (password `password`) in the
    /// database `app`, directly on the cluster (not through the gateway).
    pub async fn direct_as(&self, user: &str, password: &str) -> tokio_postgres::Client {
        let conninfo =
            format!("host=127.0.0.1 port={} user={user} password={password} dbname=app", self.cluster.port());
        let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// The same as `app`, the database's owner.
    pub async fn direct(&self) -> tokio_postgres::Client {
        self.direct_as("app", APP_PASSWORD).await
    }

    /// `p` in the gateway's directory.
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// This stack's gateway configuration run as a process of its own,
    /// `pg-proxy serve` (`command` is the binary: `bin!()`), on a free
    /// loopback port, with `extra` appended to the configuration (its own
    /// tables: `[limits]`, `[admin]`...). It is killed when dropped. For
    /// what only a process shows: its memory, its file descriptors,
    /// signals.
    pub fn serve(&self, mut command: Command, extra: &str) -> Served {
        let port = free_port();
        let config = self.path(&format!("serve-{port}.toml"));
        let text_config = std::fs::read_to_string(self.path("gateway.toml"))
            .unwrap()
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""));
        std::fs::write(&config, format!("{text_config}\n{extra}\n")).unwrap();
        let child = command
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting pg-proxy serve: {e}"));
        crate::process::track(child.id());
        let served = Served { child, port, config };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "pg-proxy serve did not start listening on {port}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        served
    }
}

/// How long a test may hold a stack before its [`Watchdog`] ends the test
/// binary: five to ten times what the longest test takes here (ten
/// thousand connects, one to two minutes), and well within what CI allows
/// the whole suite.
pub const STACK_LIMIT: Duration = Duration::from_secs(600);

/// Raises the test process's soft limit on open files to its hard limit,
/// as the gateway raises its own, and returns it (`u64::MAX`: none). A
/// test with a thousand clients at once holds a thousand sockets, past
/// the common default soft limit of 1024; a connect refused for it would
/// be a failure of the machine, not of the gateway.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum) {
        if current < maximum {
            limit.current = Some(maximum);
            let _ = setrlimit(Resource::Nofile, limit);
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// A free loopback port (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `pg-proxy serve` as its own process ([`Stack::serve`]).
pub struct Served {
    /// The process.
    pub child: std::process::Child,
    /// Where it listens.
    pub port: u16,
    /// Its configuration file.
    pub config: PathBuf,
}

impl Served {
    /// Its resident memory, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The file descriptors it holds open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }

    /// Sends it a signal (`HUP`, `TERM`...).
    pub fn signal(&self, name: &str) {
        crate::process::signal(self.child.id(), name);
    }

    /// A libpq connection string to it, logging in with `token`.
    pub fn conninfo(&self, token: &str) -> String {
        format!("host=127.0.0.1 port={} user=load dbname=app sslmode=disable password={token}", self.port)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::process::untrack(self.child.id());
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
