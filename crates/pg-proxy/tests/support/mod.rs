//! A gateway in front of a throwaway PostgreSQL cluster, for the tests.
//!
//! [`Stack::start`] starts a cluster, creates the role `app` (owner of the
//! database `app`, loaded with `examples/demo.sql`), writes a development
//! key pair with `pg-proxy token keygen`, and runs the gateway in this
//! process on a free loopback port with the given policy.
#![allow(dead_code, reason = "each test file uses part of the harness")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use pg_proxy::cluster::{Cluster, ClusterOptions};
use pg_proxy::config::Config;
use pg_proxy::server::Gateway;

pub const APP_PASSWORD: &str = "app-pw-for-tests";

pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pg-proxy"))
}

pub struct Stack {
    pub cluster: Cluster,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub gateway: Arc<Gateway>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Stack {
    /// The stack with `examples/policy.toml`.
    pub fn start() -> Stack {
        Stack::with_policy(&std::fs::read_to_string(repo("examples/policy.toml")).unwrap())
    }

    pub fn with_policy(policy: &str) -> Stack {
        Stack::with(policy, "")
    }

    /// `extra` is appended to the gateway's configuration.
    pub fn with(policy: &str, extra: &str) -> Stack {
        Stack::with_cluster(policy, extra, &ClusterOptions::default(), "tls = \"disable\"")
    }

    /// The full form: the cluster's options, and extra `[upstream]` keys.
    pub fn with_cluster(policy: &str, extra: &str, options: &ClusterOptions, upstream_extra: &str) -> Stack {
        let cluster = Cluster::start(options).unwrap();
        cluster.create_role("app", APP_PASSWORD, false).unwrap();
        cluster.create_database("app", "app").unwrap();
        let schema = std::fs::read_to_string(repo("examples/demo.sql")).unwrap();
        let psql = cluster.bin_dir().join("psql");
        let out = Command::new(if psql.exists() { psql } else { PathBuf::from("psql") })
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(format!("host=127.0.0.1 port={} user=app dbname=app", cluster.port()))
            .env("PGPASSWORD", APP_PASSWORD)
            .arg("-c")
            .arg(&schema)
            .output()
            .unwrap();
        assert!(out.status.success(), "loading demo.sql: {}", String::from_utf8_lossy(&out.stderr));

        let dir = cluster.dir().join("gateway");
        std::fs::create_dir_all(&dir).unwrap();
        let keygen = bin().args(["token", "keygen", "--out"]).arg(dir.join("keys")).output().unwrap();
        assert!(keygen.status.success(), "{}", String::from_utf8_lossy(&keygen.stderr));
        std::fs::write(dir.join("policy.toml"), policy).unwrap();
        std::fs::write(dir.join("upstream-password"), APP_PASSWORD).unwrap();
        let config_text = format!(
            "listen = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n{extra}\n[auth]\njwks_file = \"keys/jwks.json\"\n\
             [upstream]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"app\"\npassword_file = \"upstream-password\"\n\
             {upstream_extra}\n",
            cluster.port()
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
        Stack { cluster, addr, dir, gateway, runtime: Some(runtime) }
    }

    /// Serves the same gateway on another address too (port chosen freely).
    pub fn listen_also(&self, ip: &str) -> SocketAddr {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let gw = Arc::clone(&self.gateway);
        self.runtime.as_ref().unwrap().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = gw.serve(listener).await;
        });
        addr
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("keys/signing-key.pem")
    }

    /// A development token for `subject` in `groups`, optionally for an
    /// agent acting for them.
    pub fn token(&self, subject: &str, groups: &[&str], actor: Option<&str>) -> String {
        let mut cmd = bin();
        cmd.args(["token", "mint", "--key"]).arg(self.key()).args(["--sub", subject]);
        cmd.arg("--groups").arg(groups.join(","));
        if let Some(a) = actor {
            cmd.args(["--actor", a]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// A libpq connection string to the gateway.
    pub fn conninfo(&self, token: &str) -> String {
        format!("host=127.0.0.1 port={} user=agent dbname=app password={token} sslmode=disable", self.addr.port())
    }

    pub async fn connect(&self, groups: &[&str]) -> tokio_postgres::Client {
        self.connect_as("alice", groups, None).await
    }

    pub async fn connect_as(&self, subject: &str, groups: &[&str], actor: Option<&str>) -> tokio_postgres::Client {
        let token = self.token(subject, groups, actor);
        let (client, connection) =
            tokio_postgres::connect(&self.conninfo(&token), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Runs psql against the gateway with `args` after the connection.
    pub fn psql(&self, token: &str, args: &[&str]) -> Output {
        let psql = self.cluster.bin_dir().join("psql");
        let program = if psql.exists() { psql } else { PathBuf::from("psql") };
        Command::new(program)
            .args(["-X", "-d"])
            .arg(format!("host=127.0.0.1 port={} user=agent dbname=app sslmode=disable", self.addr.port()))
            .env("PGPASSWORD", token)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// Runs `command` (stdin closed, stdout and stderr captured) and returns
/// its output, or kills it and returns `Err` with what it had printed to
/// stderr when it is still running after `deadline`: a client that hangs
/// fails its test instead of holding up the suite.
pub fn output_within(command: &mut Command, deadline: std::time::Duration) -> Result<Output, String> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    // Both pipes are drained on threads, so a chatty child cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < deadline => std::thread::sleep(std::time::Duration::from_millis(50)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // A grandchild may still hold the pipe: wait for the rest of stderr briefly only.
                let killed = std::time::Instant::now();
                while !stderr.is_finished() && killed.elapsed() < std::time::Duration::from_secs(2) {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let stderr = if stderr.is_finished() { stderr.join().unwrap_or_default() } else { Vec::new() };
                return Err(format!(
                    "{:?} did not finish in {deadline:?} (killed); stderr:\n{}",
                    command.get_program(),
                    text(&stderr)
                ));
            }
        }
    };
    Ok(Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() })
}
