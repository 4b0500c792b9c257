//! `gateway-bench`: the gateway (`pg-proxy serve`, release build) against
//! PostgreSQL reached directly, through pgbouncer and through a do-nothing
//! tokio byte relay, with pgbench, in one run.
//!
//! ```sh
//! cargo build --release -p pg-proxy
//! cargo run --release -p portcullis-benches --bin gateway-bench -- [--quick]
//! ```
//!
//! It starts a throwaway PostgreSQL cluster ([`pg_proxy::cluster`]), loads
//! `pgbench -i -s 10` and a 1,000,000-row table `people` (one masked column,
//! `ssn`), starts the gateway as its own process with
//! `benches/gateway/policy.toml`, pgbouncer in session mode and the relay
//! (this program run as `gateway-bench --relay PORT UPSTREAM_PORT`: a
//! multi-threaded tokio runtime copying bytes both ways, the cost of the hop
//! with no protocol work at all), then:
//!
//! - measures the gateway's resident memory per idle logged-in connection;
//! - runs pgbench against the four targets (direct, gateway, pgbouncer, relay) in
//!   four configurations, interleaved (every repetition visits every
//!   configuration and target, in a rotating order), taking medians; the
//!   proxies' CPU time (`/proc/PID/stat`) over each run gives their CPU cost
//!   per transaction, in all and split into user space and kernel;
//! - streams `people` with `COPY (SELECT ...) TO STDOUT` through each target
//!   (the gateway masks `ssn` on the way), timed, interleaved, medians;
//! - prints the figures as Markdown tables, with the issue's targets.
//!
//! Every process it starts is killed, and the cluster directory removed,
//! when it ends, also on an error or Ctrl-C.

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

mod audit;
mod cpus;

use pg_proxy::cluster::{Cluster, ClusterOptions};
use pg_proxy::token::{self, KeyType, MintRequest};

/// Set by Ctrl-C: the run stops at the next check and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const USAGE: &str = "\
gateway-bench: pgbench through the Portcullis gateway, pgbouncer and directly.

Build the gateway first, then run:
  cargo build --release -p pg-proxy
  cargo run --release -p portcullis-benches --bin gateway-bench -- [OPTIONS]

Options:
  --quick                 1 repetition of 5 s runs (default: 3 repetitions of 15 s)
  --reps N                repetitions of every (configuration, target) run
  --duration SECONDS      length of every pgbench run (-T)
  --configs A,B           only these configurations: select-prepared-c16, select-simple-c1,
                          select-prepared-c1, tpcb-c8
  --targets A,B           only these targets: direct, gateway, pgbouncer, relay
  --scale N               pgbench scale (default 10)
  --idle-connections N    idle gateway connections for the memory figure (default 200; 0: skip)
  --no-stream             skip the masked COPY stream
  --pg-proxy PATH         the gateway binary (default: target/release/pg-proxy, or $PG_PROXY_BIN)
  --audit                 compare the gateway with its audit log off and on with each durability
                          (none, commit, every) instead; configurations default to
                          select-prepared-c16,tpcb-c8
  --modes A,B             with --audit, only these modes: off, none, commit, every (default: all)
  --alternate             with --audit, start one gateway per (configuration, mode) and keep it
                          running; each of --reps rounds runs every mode for --duration seconds,
                          in turn (try --reps 200 --duration 3: many short pairs narrow the
                          targets' intervals faster than a few long ones)
  --proxy-cpus LIST       run the proxies (the gateway, pgbouncer, the relay) on these CPUs (`1`,
                          `2,3`, `2-3`) and PostgreSQL, pgbench and psql on the others, as a
                          gateway deployed on CPUs of its own runs (default: all share every CPU)
  --help                  this text

The relay target is this program run as `gateway-bench --relay PORT UPSTREAM_PORT`.

Environment: GATEWAY_BENCH_THREADS=N gives the gateway and the relay N
runtime threads (default: one per CPU); GATEWAY_BENCH_RELAY_WRAPPER=PROGRAM
starts the relay as `PROGRAM <this program> --relay ...` (a profiler, as
--pg-proxy can name one for the gateway); GATEWAY_BENCH_AUDIT_DIR=DIR puts
--audit's logs under DIR (a tmpfs, to leave the disk out) rather than beside
each gateway.

Needs PostgreSQL's server binaries (initdb, pg_ctl), pgbench, psql and pgbouncer.";

/// Where pgbench and psql connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Gateway,
    Pgbouncer,
    Relay,
}

const TARGETS: [Target; 4] = [Target::Direct, Target::Gateway, Target::Pgbouncer, Target::Relay];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Gateway => "gateway",
            Target::Pgbouncer => "pgbouncer",
            Target::Relay => "relay",
        }
    }

    fn parse(text: &str) -> Result<Target, String> {
        TARGETS.into_iter().find(|t| t.name() == text).ok_or_else(|| format!("unknown target {text:?}"))
    }
}

/// One pgbench configuration (`-n -T` and the connection are added).
struct BenchConfig {
    name: &'static str,
    args: &'static [&'static str],
    /// Statements in one of its transactions (for CPU per statement).
    statements: u32,
}

const CONFIGS: [BenchConfig; 4] = [
    BenchConfig { name: "select-prepared-c16", args: &["-S", "-M", "prepared", "-c", "16", "-j", "2"], statements: 1 },
    BenchConfig { name: "select-simple-c1", args: &["-S", "-c", "1"], statements: 1 },
    BenchConfig { name: "select-prepared-c1", args: &["-S", "-M", "prepared", "-c", "1"], statements: 1 },
    BenchConfig { name: "tpcb-c8", args: &["-c", "8", "-j", "2"], statements: 7 },
];

/// The streamed statement.
const STREAM_SQL: &str = "COPY (SELECT id, name, ssn FROM people) TO STDOUT";
/// The streamed table.
const PEOPLE_SQL: &str = "CREATE TABLE people AS SELECT g AS id, 'name ' || g AS name, lpad(g::text, 9, '0') AS ssn \
                          FROM generate_series(1, 1000000) g";

const BENCH_USER: &str = "bench";
const BENCH_DB: &str = "bench";

struct Options {
    quick: bool,
    reps: usize,
    duration: u64,
    configs: Vec<&'static BenchConfig>,
    targets: Vec<Target>,
    scale: u32,
    idle_connections: usize,
    stream: bool,
    pg_proxy: Option<PathBuf>,
    audit: bool,
    /// With `--audit`: the modes compared; all four by default.
    modes: Vec<audit::Mode>,
    /// With `--audit`: each mode's gateway started once, the modes'
    /// runs alternated in rounds.
    alternate: bool,
    /// With `--proxy-cpus`: the proxies on some CPUs, the rest on others.
    placement: Option<cpus::Placement>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Option<Options>, String> {
        let mut o = Options {
            quick: false,
            reps: 0,
            duration: 0,
            configs: CONFIGS.iter().collect(),
            targets: TARGETS.to_vec(),
            scale: 10,
            idle_connections: 200,
            stream: true,
            pg_proxy: None,
            audit: false,
            modes: audit::MODES.to_vec(),
            alternate: false,
            placement: None,
        };
        let mut configs_given = false;
        let (mut reps, mut duration) = (None, None);
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--help" | "-h" => return Ok(None),
                "--quick" => o.quick = true,
                "--reps" => reps = Some(number(&value("--reps")?)?),
                "--duration" => duration = Some(number(&value("--duration")?)?),
                "--scale" => o.scale = number(&value("--scale")?)?,
                "--idle-connections" => o.idle_connections = number(&value("--idle-connections")?)?,
                "--no-stream" => o.stream = false,
                "--audit" => o.audit = true,
                "--alternate" => o.alternate = true,
                "--modes" => {
                    o.modes = value("--modes")?.split(',').map(audit::Mode::parse).collect::<Result<_, _>>()?;
                }
                "--proxy-cpus" => o.placement = Some(cpus::Placement::split(&value("--proxy-cpus")?)?),
                "--pg-proxy" => o.pg_proxy = Some(PathBuf::from(value("--pg-proxy")?)),
                "--configs" => {
                    configs_given = true;
                    o.configs = value("--configs")?
                        .split(',')
                        .map(|name| {
                            CONFIGS
                                .iter()
                                .find(|c| c.name == name)
                                .ok_or_else(|| format!("unknown configuration {name:?}"))
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--targets" => {
                    o.targets = value("--targets")?.split(',').map(Target::parse).collect::<Result<_, _>>()?;
                }
                other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
            }
        }
        if o.alternate && !o.audit {
            return Err("--alternate goes with --audit".to_string());
        }
        if o.audit && !configs_given {
            o.configs = audit::default_configs();
        }
        o.reps = reps.unwrap_or(if o.quick { 1 } else { 3 });
        o.duration = duration.unwrap_or(if o.quick { 5 } else { 15 });
        if o.reps == 0 || o.duration == 0 || o.configs.is_empty() || o.targets.is_empty() || o.modes.is_empty() {
            return Err("--reps, --duration, --configs, --targets and --modes may not be zero or empty".to_string());
        }
        Ok(Some(o))
    }
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("{text:?} is not a number"))
}

fn main() -> std::process::ExitCode {
    // Errors are printed as text (a `Result` from `main` would be printed with
    // `Debug`, quotes and escaped line breaks); everything started is dropped,
    // so stopped and removed, before this returns.
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, port, upstream] = args.as_slice() {
        if flag == "--relay" {
            return relay(number(port)?, number(upstream)?);
        }
    }
    let Some(options) = Options::parse(&args)? else {
        println!("{USAGE}");
        return Ok(());
    };
    // Before any thread or process is started: they keep the CPUs their
    // parent thread had.
    if let Some(placement) = &options.placement {
        placement.enter_rest()?;
    }
    let command = if args.is_empty() {
        "cargo run --release -p portcullis-benches --bin gateway-bench".to_string()
    } else {
        format!("cargo run --release -p portcullis-benches --bin gateway-bench -- {}", args.join(" "))
    };
    // Ctrl-C: children in the terminal's process group get it too; the
    // driver notices, stops and cleans up instead of dying on the spot.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            INTERRUPTED.store(true, Ordering::SeqCst);
        }
    });
    let result = run(&options, &command, &runtime);
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("interrupted; everything started was stopped and removed");
    }
    result
}

/// The relay: a byte pump between each client and a new connection to
/// PostgreSQL, on a multi-threaded tokio runtime (one worker per CPU).
fn relay(port: u16, upstream: u16) -> Result<(), String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Ok(n) = std::env::var("GATEWAY_BENCH_THREADS") {
        match number::<usize>(&n)? {
            0 => {}
            n => {
                builder.worker_threads(n);
            }
        }
    }
    let runtime = builder.enable_all().build().map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|e| format!("relay: binding port {port}: {e}"))?;
        loop {
            let Ok((mut client, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(mut server) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)).await else {
                    return;
                };
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    })
}

fn start_relay(cluster: &Cluster) -> Result<(Proc, u16), String> {
    let port = free_port()?;
    let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    let log = cluster.dir().join("relay.log");
    let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut command = match std::env::var_os("GATEWAY_BENCH_RELAY_WRAPPER") {
        Some(wrapper) => {
            let mut c = Command::new(wrapper);
            c.arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let child = command
        .args(["--relay", &port.to_string(), &cluster.port().to_string()])
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .map_err(|e| format!("starting the relay: {e}"))?;
    let mut proc = Proc { name: "relay", child, log };
    proc.wait_listening(port)?;
    Ok((proc, port))
}

fn check_interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err("interrupted".to_string());
    }
    Ok(())
}

// ------------------------------------------------------------------ setup

/// The programs the run needs.
struct Tools {
    pg_proxy: PathBuf,
    pgbench: PathBuf,
    psql: PathBuf,
    pgbouncer: PathBuf,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn find_pg_proxy(options: &Options) -> Result<PathBuf, String> {
    let path = match (&options.pg_proxy, std::env::var_os("PG_PROXY_BIN")) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => {
            let target =
                std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from);
            target.join("release/pg-proxy")
        }
    };
    if !path.is_file() {
        return Err(format!(
            "the release gateway binary {} is missing; build it first:\n  cargo build --release -p pg-proxy\n\
             (or give its path with --pg-proxy PATH)",
            path.display()
        ));
    }
    // A binary older than the sources measures yesterday's gateway.
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let newest = ["crates/pg-proxy/src", "crates/policy-core/src"]
        .iter()
        .filter_map(|dir| newest_mtime(&workspace_root().join(dir)))
        .max();
    if let (Some(built), Some(newest)) = (built, newest) {
        if newest > built {
            eprintln!(
                "warning: {} is older than the gateway's sources; rebuild with `cargo build --release -p pg-proxy`",
                path.display()
            );
        }
    }
    Ok(path)
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() { newest_mtime(&path) } else { entry.metadata().and_then(|m| m.modified()).ok() };
        newest = newest.max(time);
    }
    newest
}

fn find_program(name: &str, dirs: &[&Path]) -> Result<PathBuf, String> {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH").iter().flat_map(std::env::split_paths).collect();
    dirs.iter()
        .map(|d| d.to_path_buf())
        .chain(path_dirs)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("`{name}` not found (install it, e.g. `apt-get install {name}`)"))
}

/// The user the server programs run as when the driver is root.
struct RunAs {
    uid: u32,
    gid: u32,
}

fn run_as() -> Result<Option<RunAs>, String> {
    if id("-u", None)? != 0 {
        return Ok(None);
    }
    for user in ["postgres", "nobody"] {
        if let (Ok(uid), Ok(gid)) = (id("-u", Some(user)), id("-g", Some(user))) {
            return Ok(Some(RunAs { uid, gid }));
        }
    }
    Err("running as root, and neither user `postgres` nor `nobody` exists to run pgbouncer as".to_string())
}

fn id(flag: &str, user: Option<&str>) -> Result<u32, String> {
    let output = Command::new("id").arg(flag).args(user).output().map_err(|e| format!("id: {e}"))?;
    if !output.status.success() {
        return Err(format!("id {flag} {}: failed", user.unwrap_or_default()));
    }
    number(String::from_utf8_lossy(&output.stdout).trim())
}

/// How to reach a target.
#[derive(Clone)]
struct Endpoint {
    port: u16,
    user: String,
    password: String,
}

impl Endpoint {
    fn apply(&self, command: &mut Command) {
        command
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", BENCH_DB)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .env_remove("PGAPPNAME")
            .stdin(Stdio::null());
    }
}

/// A child process, killed when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited ({status}); its log:\n{}", self.name, log_tail(&self.log))),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// Waits until the process accepts TCP connections on `port`.
    fn wait_listening(&mut self, port: u16) -> Result<(), String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.check_running()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} does not listen on {addr}; its log:\n{}", self.name, log_tail(&self.log)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines.get(lines.len().saturating_sub(20)..).unwrap_or_default().join("\n")
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("binding a port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn write_file(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
}

fn chown(path: &Path, run_as: Option<&RunAs>) -> Result<(), String> {
    match run_as {
        Some(r) => {
            std::os::unix::fs::chown(path, Some(r.uid), Some(r.gid)).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => Ok(()),
    }
}

/// Runs a command to its end; its standard output, or an error with its output.
fn run_command(mut command: Command, what: &str) -> Result<String, String> {
    let output = command.output().map_err(|e| format!("{what}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("{what} failed ({}):\n{}\n{}", output.status, stderr.trim(), stdout.trim()));
    }
    Ok(stdout)
}

fn psql(tools: &Tools, endpoint: &Endpoint, sql: &str) -> Result<String, String> {
    let mut command = Command::new(&tools.psql);
    endpoint.apply(&mut command);
    command.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    run_command(command, &format!("psql -p {} -c {sql:?}", endpoint.port))
}

fn start_gateway(tools: &Tools, cluster: &Cluster, password: &str) -> Result<(Proc, u16, String), String> {
    start_gateway_in(tools, cluster, password, "gateway", "", "warn")
}

/// A gateway in `cluster.dir()/name`, its configuration ending with
/// `extra`, logging at `log_level`.
fn start_gateway_in(
    tools: &Tools,
    cluster: &Cluster,
    password: &str,
    name: &str,
    extra: &str,
    log_level: &str,
) -> Result<(Proc, u16, String), String> {
    let dir = cluster.dir().join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (key, _jwks) = token::keygen(&dir.join("keys"), KeyType::Ed25519)?;
    let groups = vec!["bench".to_string()];
    let jwt = token::mint(&MintRequest {
        key: &key,
        subject: "bench",
        groups: &groups,
        actor: None,
        ttl_seconds: 24 * 3600,
        issuer: None,
        audience: None,
    })?;
    write_file(&dir.join("upstream-password"), password)?;
    let policy = workspace_root().join("benches/gateway/policy.toml");
    let policy = policy.canonicalize().map_err(|e| format!("{}: {e}", policy.display()))?;
    let port = free_port()?;
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\npolicy = {policy:?}\n\n[auth]\njwks_file = \"keys/jwks.json\"\n\n\
         [upstream]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{BENCH_USER}\"\npassword_file = \"upstream-password\"\n\
         tls = \"disable\"\n",
        cluster.port(),
        policy = policy.display().to_string(),
    );
    // The gateway's runtime threads, for comparing (0 or unset: one per CPU).
    let config = match std::env::var("GATEWAY_BENCH_THREADS") {
        Ok(n) => format!("{config}\n[limits]\nworker_threads = {}\n", number::<usize>(&n)?),
        Err(_) => config,
    };
    let config = format!("{config}\n{extra}");
    let config_path = dir.join("gateway.toml");
    write_file(&config_path, &config)?;
    let log = dir.join("gateway.log");
    let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = Command::new(&tools.pg_proxy)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", log_level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("{}: {e}", tools.pg_proxy.display()))?;
    let mut proc = Proc { name: "pg-proxy serve", child, log };
    proc.wait_listening(port)?;
    Ok((proc, port, jwt))
}

fn start_pgbouncer(
    tools: &Tools,
    cluster: &Cluster,
    password: &str,
    run_as: Option<&RunAs>,
) -> Result<(Proc, u16), String> {
    let dir = cluster.dir().join("pgbouncer");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    chown(&dir, run_as)?;
    let userlist = dir.join("userlist.txt");
    write_file(&userlist, &format!("\"{BENCH_USER}\" \"{password}\"\n"))?;
    std::fs::set_permissions(&userlist, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", userlist.display()))?;
    chown(&userlist, run_as)?;
    let port = free_port()?;
    let ini = format!(
        "[databases]\n{BENCH_DB} = host=127.0.0.1 port={} dbname={BENCH_DB}\n\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = scram-sha-256\nauth_file = {}\npool_mode = session\nmax_client_conn = 400\n\
         default_pool_size = 40\nmax_db_connections = 0\nignore_startup_parameters = extra_float_digits\n\
         log_connections = 0\nlog_disconnections = 0\nlog_pooler_errors = 1\nsyslog = 0\n",
        cluster.port(),
        userlist.display(),
    );
    let ini_path = dir.join("pgbouncer.ini");
    write_file(&ini_path, &ini)?;
    chown(&ini_path, run_as)?;
    let log = dir.join("pgbouncer.log");
    let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut command = Command::new(&tools.pgbouncer);
    command.arg(&ini_path).current_dir(&dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file);
    if let Some(r) = run_as {
        // pgbouncer refuses to run as root.
        std::os::unix::process::CommandExt::uid(&mut command, r.uid);
        std::os::unix::process::CommandExt::gid(&mut command, r.gid);
    }
    let child = command.spawn().map_err(|e| format!("{}: {e}", tools.pgbouncer.display()))?;
    let mut proc = Proc { name: "pgbouncer", child, log };
    proc.wait_listening(port)?;
    Ok((proc, port))
}

// ------------------------------------------------------------------ measuring

/// CPU time of a process (all its threads), in clock ticks.
#[derive(Debug, Clone, Copy)]
struct Ticks {
    /// In user space (`utime`).
    user: u64,
    /// In the kernel on the process's behalf (`stime`).
    kernel: u64,
}

/// CPU seconds between two readings.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    user: f64,
    kernel: f64,
}

impl Cpu {
    fn between(before: Ticks, after: Ticks) -> Cpu {
        let tck = clock_ticks_per_second();
        Cpu {
            user: after.user.saturating_sub(before.user) as f64 / tck,
            kernel: after.kernel.saturating_sub(before.kernel) as f64 / tck,
        }
    }

    fn total(self) -> f64 {
        self.user + self.kernel
    }
}

/// utime and stime of a process (all its threads).
fn cpu_ticks(pid: u32) -> Result<Ticks, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("unreadable /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = number(fields.get(11).ok_or("short /proc/PID/stat")?)?;
    let stime: u64 = number(fields.get(12).ok_or("short /proc/PID/stat")?)?;
    Ok(Ticks { user: utime, kernel: stime })
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// The whole machine's CPU time from `/proc/stat` (every CPU, in clock
/// ticks): what pgbench, PostgreSQL, the proxy and the kernel's own
/// threads (writeback, the journal) used together, what was left idle,
/// and what the hypervisor gave to other guests (steal).
#[derive(Debug, Clone, Copy)]
struct MachineTicks {
    busy: u64,
    /// Of `busy`, in the kernel (system, interrupts, soft interrupts).
    kernel: u64,
    idle: u64,
    steal: u64,
    /// Context switches on every CPU since boot.
    switches: u64,
}

fn machine_ticks() -> Result<MachineTicks, String> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let line = stat.lines().find_map(|l| l.strip_prefix("cpu ")).ok_or("no \"cpu\" line in /proc/stat")?;
    let fields = line.split_whitespace().map(number::<u64>).collect::<Result<Vec<_>, _>>()?;
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is in user already).
    let switches = stat.lines().find_map(|l| l.strip_prefix("ctxt ")).map(number::<u64>).transpose()?.unwrap_or(0);
    Ok(MachineTicks {
        switches,
        busy: field(0) + field(1) + field(2) + field(5) + field(6),
        kernel: field(2) + field(5) + field(6),
        idle: field(3) + field(4),
        steal: field(7),
    })
}

/// The machine's CPU over a run, in seconds of CPU time.
#[derive(Debug, Clone, Copy)]
struct Machine {
    busy: f64,
    /// Of `busy`, in the kernel: system calls and faults of every
    /// process, the kernel's own threads, interrupts.
    kernel: f64,
    idle: f64,
    steal: f64,
    /// Context switches.
    switches: u64,
}

impl Machine {
    fn between(before: MachineTicks, after: MachineTicks) -> Machine {
        let tck = clock_ticks_per_second();
        let seconds = |a: u64, b: u64| a.saturating_sub(b) as f64 / tck;
        Machine {
            busy: seconds(after.busy, before.busy),
            kernel: seconds(after.kernel, before.kernel),
            switches: after.switches.saturating_sub(before.switches),
            idle: seconds(after.idle, before.idle),
            steal: seconds(after.steal, before.steal),
        }
    }

    /// The share of the machine's CPU time that was idle, and the share
    /// the hypervisor took (steal), in percent.
    fn shares(self) -> (f64, f64) {
        let all = self.busy + self.idle + self.steal;
        if all <= 0.0 {
            return (0.0, 0.0);
        }
        (self.idle * 100.0 / all, self.steal * 100.0 / all)
    }
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).ok_or("no VmRSS in /proc/PID/status")?;
    number(line.trim().trim_end_matches("kB").trim())
}

/// The processes whose CPU time is measured, by target.
struct Pids {
    gateway: u32,
    pgbouncer: u32,
    relay: u32,
}

impl Pids {
    fn of(&self, target: Target) -> Option<u32> {
        match target {
            Target::Direct => None,
            Target::Gateway => Some(self.gateway),
            Target::Pgbouncer => Some(self.pgbouncer),
            Target::Relay => Some(self.relay),
        }
    }
}

/// One pgbench run.
#[derive(Debug, Clone, Copy)]
struct Run {
    tps: f64,
    transactions: u64,
    /// The proxy's CPU seconds over the run.
    proxy_cpu: Option<Cpu>,
    /// The whole machine's CPU over the run.
    machine: Machine,
}

impl Run {
    /// The proxy's CPU µs per transaction, by `part` of its CPU time.
    fn per_txn(&self, part: fn(Cpu) -> f64) -> Option<f64> {
        self.proxy_cpu.filter(|_| self.transactions > 0).map(|cpu| part(cpu) * 1e6 / self.transactions as f64)
    }

    fn cpu_us_per_txn(&self) -> Option<f64> {
        self.per_txn(Cpu::total)
    }

    /// The whole machine's busy CPU µs per transaction.
    fn machine_us_per_txn(&self) -> Option<f64> {
        (self.transactions > 0).then(|| self.machine.busy * 1e6 / self.transactions as f64)
    }

    /// The machine's context switches per transaction.
    fn switches_per_txn(&self) -> Option<f64> {
        (self.transactions > 0).then(|| self.machine.switches as f64 / self.transactions as f64)
    }

    /// Of it, the kernel's µs per transaction.
    fn machine_kernel_us_per_txn(&self) -> Option<f64> {
        (self.transactions > 0).then(|| self.machine.kernel * 1e6 / self.transactions as f64)
    }
}

fn pgbench(tools: &Tools, endpoint: &Endpoint, args: &[&str], seconds: u64, proxy: Option<u32>) -> Result<Run, String> {
    let mut command = Command::new(&tools.pgbench);
    endpoint.apply(&mut command);
    command.arg("-n").args(args).args(["-T", &seconds.to_string()]);
    let before = proxy.map(cpu_ticks).transpose()?;
    let machine_before = machine_ticks()?;
    let stdout = run_command(command, &format!("pgbench -n {} -T {seconds} (port {})", args.join(" "), endpoint.port))?;
    let machine = Machine::between(machine_before, machine_ticks()?);
    let after = proxy.map(cpu_ticks).transpose()?;
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = ").filter(|r| r.contains("without initial connection time")))
        .and_then(|r| r.split_whitespace().next())
        .ok_or_else(|| format!("no \"tps = N (without initial connection time)\" in pgbench's output:\n{stdout}"))?;
    let transactions = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|r| r.split(['/', ' ']).next())
        .ok_or_else(|| format!("no \"number of transactions actually processed\" in pgbench's output:\n{stdout}"))?;
    let proxy_cpu = match (before, after) {
        (Some(b), Some(a)) => Some(Cpu::between(b, a)),
        _ => None,
    };
    Ok(Run { tps: number(tps)?, transactions: number(transactions)?, proxy_cpu, machine })
}

/// One timed COPY stream: wall seconds and the proxy's CPU seconds.
fn stream(tools: &Tools, endpoint: &Endpoint, proxy: Option<u32>) -> Result<(f64, Option<f64>), String> {
    let mut command = Command::new(&tools.psql);
    endpoint.apply(&mut command);
    command.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", STREAM_SQL]).stdout(Stdio::null());
    let before = proxy.map(cpu_ticks).transpose()?;
    let start = Instant::now();
    run_command(command, &format!("psql -c {STREAM_SQL:?} (port {})", endpoint.port))?;
    let wall = start.elapsed().as_secs_f64();
    let after = proxy.map(cpu_ticks).transpose()?;
    let cpu = match (before, after) {
        (Some(b), Some(a)) => Some(Cpu::between(b, a).total()),
        _ => None,
    };
    Ok((wall, cpu))
}

/// An untimed stream: its size in bytes and its first line.
fn stream_sample(tools: &Tools, endpoint: &Endpoint) -> Result<(u64, String), String> {
    let mut command = Command::new(&tools.psql);
    endpoint.apply(&mut command);
    command.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", STREAM_SQL]).stdout(Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("psql: {e}"))?;
    let mut bytes = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut bytes).map_err(|e| format!("reading psql's output: {e}"))?;
    }
    let status = child.wait().map_err(|e| format!("psql: {e}"))?;
    if !status.success() {
        return Err(format!("psql -c {STREAM_SQL:?} (port {}) failed ({status})", endpoint.port));
    }
    let first =
        bytes.split(|b| *b == b'\n').next().map(|l| String::from_utf8_lossy(l).into_owned()).unwrap_or_default();
    Ok((bytes.len() as u64, first))
}

/// Idle logged-in connections: the gateway's VmRSS before, with half and
/// with all of `n` open (each has run one `SELECT 1`).
async fn idle_rss(conninfo: &str, pid: u32, n: usize) -> Result<[u64; 3], String> {
    let mut clients = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    let settle = || tokio::time::sleep(Duration::from_millis(500));
    let open = |conninfo: String| async move {
        let (client, connection) =
            tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.map_err(|e| format!("connecting: {e}"))?;
        let task = tokio::spawn(connection);
        client.simple_query("SELECT 1").await.map_err(|e| format!("SELECT 1: {e}"))?;
        Ok::<_, String>((client, task))
    };
    // One connection first: one-time allocations (caches) are not counted.
    let (warm, warm_task) = open(conninfo.to_string()).await?;
    drop(warm);
    let _ = warm_task.await;
    settle().await;
    let base = rss_kib(pid)?;
    let mut half = base;
    for i in 0..n {
        let (client, task) = open(conninfo.to_string()).await?;
        clients.push(client);
        tasks.push(task);
        if i + 1 == n / 2 {
            settle().await;
            half = rss_kib(pid)?;
        }
    }
    settle().await;
    let all = rss_kib(pid)?;
    drop(clients);
    for task in tasks {
        let _ = task.await;
    }
    Ok([base, half, all])
}

// ------------------------------------------------------------------ statistics

fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v.get(mid).copied()
    } else {
        Some((v.get(mid.checked_sub(1)?)? + v.get(mid)?) / 2.0)
    }
}

fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.decimals$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    }
}

// ------------------------------------------------------------------ the run

fn run(options: &Options, command: &str, runtime: &tokio::runtime::Runtime) -> Result<(), String> {
    let pg_proxy = find_pg_proxy(options)?;
    let run_as = run_as()?;
    eprintln!("starting PostgreSQL...");
    let cluster = Cluster::start(&ClusterOptions {
        max_connections: 300,
        shared_buffers: "256MB".to_string(),
        ..ClusterOptions::default()
    })
    .map_err(|e| e.to_string())?;
    let bin = cluster.bin_dir().to_path_buf();
    let tools = Tools {
        pg_proxy,
        pgbench: find_program("pgbench", &[&bin])?,
        psql: find_program("psql", &[&bin])?,
        pgbouncer: find_program("pgbouncer", &[])?,
    };
    let password = format!("bench-{}", std::process::id());
    cluster.create_role(BENCH_USER, &password, false).map_err(|e| e.to_string())?;
    cluster.create_database(BENCH_DB, BENCH_USER).map_err(|e| e.to_string())?;
    let direct = Endpoint { port: cluster.port(), user: BENCH_USER.to_string(), password: password.clone() };

    eprintln!("pgbench -i -s {} and the 1,000,000-row table `people`...", options.scale);
    let mut init = Command::new(&tools.pgbench);
    direct.apply(&mut init);
    init.args(["-i", "-q", "-s", &options.scale.to_string()]);
    run_command(init, "pgbench -i")?;
    if options.audit {
        let report = audit::run(options, &tools, &cluster, &password, command)?;
        println!("{report}");
        return cluster.stop().map_err(|e| e.to_string());
    }
    psql(&tools, &direct, PEOPLE_SQL)?;
    psql(&tools, &direct, "VACUUM ANALYZE people")?;
    check_interrupted()?;

    eprintln!("starting the gateway and pgbouncer...");
    let placement = options.placement.as_ref();
    let (mut gateway, gateway_port, jwt) = cpus::start_proxy(placement, || start_gateway(&tools, &cluster, &password))?;
    let (mut pgbouncer, pgbouncer_port) =
        cpus::start_proxy(placement, || start_pgbouncer(&tools, &cluster, &password, run_as.as_ref()))?;
    let (mut relay, relay_port) = cpus::start_proxy(placement, || start_relay(&cluster))?;
    let endpoint = |target: Target| match target {
        Target::Direct => direct.clone(),
        Target::Gateway => Endpoint { port: gateway_port, user: "bench".to_string(), password: jwt.clone() },
        Target::Pgbouncer => {
            Endpoint { port: pgbouncer_port, user: BENCH_USER.to_string(), password: password.clone() }
        }
        Target::Relay => Endpoint { port: relay_port, user: BENCH_USER.to_string(), password: password.clone() },
    };
    for target in TARGETS {
        let answer = psql(&tools, &endpoint(target), "SELECT count(*) FROM pgbench_branches")?;
        if answer.trim() != options.scale.to_string() {
            return Err(format!("{}: SELECT count(*) FROM pgbench_branches gave {answer:?}", target.name()));
        }
    }
    let pids = Pids { gateway: gateway.pid(), pgbouncer: pgbouncer.pid(), relay: relay.pid() };
    eprintln!(
        "gateway pid {}, pgbouncer pid {}, relay pid {}, PostgreSQL port {}",
        pids.gateway,
        pids.pgbouncer,
        pids.relay,
        cluster.port()
    );

    // Idle memory first, on a fresh gateway: memory freed by earlier
    // sessions would be reused and hide the cost.
    let idle = if options.idle_connections > 0 {
        eprintln!("{} idle connections through the gateway...", options.idle_connections);
        let conninfo =
            format!("host=127.0.0.1 port={gateway_port} user=bench dbname={BENCH_DB} password={jwt} sslmode=disable");
        Some(runtime.block_on(idle_rss(&conninfo, pids.gateway, options.idle_connections))?)
    } else {
        None
    };
    check_interrupted()?;

    // Warm-up: caches, connections, the gateway's decision cache.
    for &target in &options.targets {
        eprintln!("warm-up: {}", target.name());
        pgbench(&tools, &endpoint(target), &["-S", "-M", "prepared", "-c", "4", "-j", "2"], 3, None)?;
        check_interrupted()?;
    }

    // The matrix, interleaved: runs[config][target] over repetitions.
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); TARGETS.len()]; options.configs.len()];
    for rep in 0..options.reps {
        for (ci, config) in options.configs.iter().enumerate() {
            for k in 0..options.targets.len() {
                let Some(&target) = options.targets.get((rep + ci + k) % options.targets.len()) else { continue };
                check_interrupted()?;
                gateway.check_running()?;
                pgbouncer.check_running()?;
                relay.check_running()?;
                let run = pgbench(&tools, &endpoint(target), config.args, options.duration, pids.of(target))?;
                eprintln!(
                    "rep {}/{} {:<20} {:<9} tps {:>9.1}  proxy CPU {} µs/txn (user {}, kernel {})",
                    rep + 1,
                    options.reps,
                    config.name,
                    target.name(),
                    run.tps,
                    fmt_opt(run.cpu_us_per_txn(), 1),
                    fmt_opt(run.per_txn(|c| c.user), 1),
                    fmt_opt(run.per_txn(|c| c.kernel), 1)
                );
                let ti = TARGETS.iter().position(|t| *t == target).unwrap_or(0);
                if let Some(slot) = runs.get_mut(ci).and_then(|c| c.get_mut(ti)) {
                    slot.push(run);
                }
            }
        }
    }

    // The masked stream, interleaved.
    let mut streams: Vec<Vec<(f64, Option<f64>)>> = vec![Vec::new(); TARGETS.len()];
    let mut samples: Vec<Option<(u64, String)>> = vec![None; TARGETS.len()];
    if options.stream {
        for (ti, target) in TARGETS.iter().enumerate() {
            if options.targets.contains(target) {
                eprintln!("stream warm-up: {}", target.name());
                if let Some(slot) = samples.get_mut(ti) {
                    *slot = Some(stream_sample(&tools, &endpoint(*target))?);
                }
            }
        }
        for rep in 0..options.reps.max(3) {
            for k in 0..options.targets.len() {
                let Some(&target) = options.targets.get((rep + k) % options.targets.len()) else { continue };
                check_interrupted()?;
                let (wall, cpu) = stream(&tools, &endpoint(target), pids.of(target))?;
                eprintln!("stream rep {} {:<9} {wall:.3} s", rep + 1, target.name());
                let ti = TARGETS.iter().position(|t| *t == target).unwrap_or(0);
                if let Some(slot) = streams.get_mut(ti) {
                    slot.push((wall, cpu));
                }
            }
        }
    }
    gateway.check_running()?;
    pgbouncer.check_running()?;

    let report = report(options, command, &runs, &streams, &samples, idle);
    println!("{report}");
    drop(pgbouncer);
    drop(gateway);
    cluster.stop().map_err(|e| e.to_string())
}

/// The machine, and where the proxies ran when `--proxy-cpus` placed them.
fn machine(placement: Option<&cpus::Placement>) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    // Counted from /proc/cpuinfo: this program's own CPU mask may be a
    // part of them (`--proxy-cpus`).
    let nproc = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".to_string());
    match placement {
        Some(p) => format!(
            "{nproc} CPUs ({model}), the proxies on CPU {} and PostgreSQL with pgbench on the others",
            p.describe()
        ),
        None => format!("{nproc} CPUs ({model})"),
    }
}

/// The CPU figures of one configuration that the target compares.
struct CpuTarget<'a> {
    name: &'a str,
    /// Median CPU µs per transaction.
    gateway: Option<f64>,
    relay: Option<f64>,
    /// The gateway's user-space µs per statement over the relay's.
    user_extra: Option<f64>,
    statements: u32,
}

fn report(
    options: &Options,
    command: &str,
    runs: &[Vec<Vec<Run>>],
    streams: &[Vec<(f64, Option<f64>)>],
    samples: &[Option<(u64, String)>],
    idle: Option<[u64; 3]>,
) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "\n## Results\n");
    let _ = writeln!(w, "Command: `{command}`  ");
    let _ = writeln!(
        w,
        "Machine: {}; pgbench scale {}, {} repetition(s) of {} s per (configuration, target), medians.\n",
        machine(options.placement.as_ref()),
        options.scale,
        options.reps,
        options.duration
    );
    let _ = writeln!(
        w,
        "| configuration | direct TPS | gateway TPS | pgbouncer TPS | relay TPS | gateway/direct | gateway/pgbouncer | \
         gateway/relay | pgbouncer/direct | relay/direct | gateway CPU µs/txn | pgbouncer CPU µs/txn | relay CPU µs/txn |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let idx = |t: Target| TARGETS.iter().position(|x| *x == t).unwrap_or(0);
    let tps = |ci: usize, t: Target| -> Option<f64> {
        let rs = runs.get(ci)?.get(idx(t))?;
        median(&rs.iter().map(|r| r.tps).collect::<Vec<_>>())
    };
    // The proxy's median CPU µs per transaction, by part of it.
    let part = |ci: usize, t: Target, part: fn(Cpu) -> f64| -> Option<f64> {
        let rs = runs.get(ci)?.get(idx(t))?;
        median(&rs.iter().filter_map(|r| r.per_txn(part)).collect::<Vec<_>>())
    };
    let cpu = |ci: usize, t: Target| part(ci, t, Cpu::total);
    let mut gw_vs_pgb: Vec<(&str, Option<f64>)> = Vec::new();
    let mut gw_vs_relay: Vec<(&str, Option<f64>)> = Vec::new();
    let mut cpu_pairs: Vec<CpuTarget<'_>> = Vec::new();
    for (ci, config) in options.configs.iter().enumerate() {
        let (d, g, p) = (tps(ci, Target::Direct), tps(ci, Target::Gateway), tps(ci, Target::Pgbouncer));
        let r = tps(ci, Target::Relay);
        let (gc, pc, rc) = (cpu(ci, Target::Gateway), cpu(ci, Target::Pgbouncer), cpu(ci, Target::Relay));
        let _ = writeln!(
            w,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            config.args.join(" "),
            fmt_opt(d, 0),
            fmt_opt(g, 0),
            fmt_opt(p, 0),
            fmt_opt(r, 0),
            fmt_opt(ratio(g, d), 2),
            fmt_opt(ratio(g, p), 2),
            fmt_opt(ratio(g, r), 2),
            fmt_opt(ratio(p, d), 2),
            fmt_opt(ratio(r, d), 2),
            fmt_opt(gc, 1),
            fmt_opt(pc, 1),
            fmt_opt(rc, 1)
        );
        gw_vs_pgb.push((config.name, ratio(g, p)));
        gw_vs_relay.push((config.name, ratio(g, r)));
        let user = |t: Target| part(ci, t, |c| c.user);
        let user_extra = match (user(Target::Gateway), user(Target::Relay)) {
            (Some(g), Some(r)) => Some((g - r) / f64::from(config.statements)),
            _ => None,
        };
        cpu_pairs.push(CpuTarget {
            name: config.name,
            gateway: gc,
            relay: rc,
            user_extra,
            statements: config.statements,
        });
    }
    // The gateway adds work in user space; its system calls are the
    // relay's (the same reads and writes per transaction), so the kernel's
    // share differs by scheduling noise alone. Shown apart, the user-space
    // difference is the gateway's own cost, with the noise left out.
    let _ = writeln!(w, "\nProxy CPU µs per transaction, user space and kernel, medians:\n");
    let _ = writeln!(
        w,
        "| configuration | gateway user | gateway kernel | relay user | relay kernel | \
         user over the relay, per statement | kernel over the relay, per statement |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|");
    for (ci, config) in options.configs.iter().enumerate() {
        let (gu, gk) = (part(ci, Target::Gateway, |c| c.user), part(ci, Target::Gateway, |c| c.kernel));
        let (ru, rk) = (part(ci, Target::Relay, |c| c.user), part(ci, Target::Relay, |c| c.kernel));
        let per_statement = |g: Option<f64>, r: Option<f64>| Some((g? - r?) / f64::from(config.statements));
        let _ = writeln!(
            w,
            "| `{}` | {} | {} | {} | {} | {} | {} |",
            config.args.join(" "),
            fmt_opt(gu, 1),
            fmt_opt(gk, 1),
            fmt_opt(ru, 1),
            fmt_opt(rk, 1),
            fmt_opt(per_statement(gu, ru), 1),
            fmt_opt(per_statement(gk, rk), 1)
        );
    }
    let _ = writeln!(w, "\nEvery run (TPS; proxy CPU µs/txn):\n");
    for (ci, config) in options.configs.iter().enumerate() {
        for t in &options.targets {
            let rs = runs.get(ci).and_then(|c| c.get(idx(*t))).map(Vec::as_slice).unwrap_or_default();
            let list: Vec<String> = rs
                .iter()
                .map(|r| match r.cpu_us_per_txn() {
                    Some(c) => format!("{:.0} ({c:.1})", r.tps),
                    None => format!("{:.0}", r.tps),
                })
                .collect();
            let _ = writeln!(w, "- {} {}: {}", config.name, t.name(), list.join(", "));
        }
    }
    // Each repetition runs the targets back to back: its own ratios show
    // how far the medians' can move on this machine.
    let _ = writeln!(w, "\nGateway TPS over each anchor's, repetition by repetition:\n");
    for (ci, config) in options.configs.iter().enumerate() {
        let tps = |t: Target| -> Vec<f64> {
            runs.get(ci).and_then(|c| c.get(idx(t))).map(|rs| rs.iter().map(|r| r.tps).collect()).unwrap_or_default()
        };
        let gateway = tps(Target::Gateway);
        for anchor in [Target::Relay, Target::Pgbouncer] {
            let ratios: Vec<String> = gateway
                .iter()
                .zip(tps(anchor))
                .filter(|(_, a)| *a > 0.0)
                .map(|(g, a)| format!("{:.2}", g / a))
                .collect();
            if !ratios.is_empty() {
                let _ = writeln!(w, "- {} gateway/{}: {}", config.name, anchor.name(), ratios.join(", "));
            }
        }
    }

    let stream_median = |t: Target| median(&streams.get(idx(t))?.iter().map(|s| s.0).collect::<Vec<_>>());
    let stream_cpu = |t: Target| median(&streams.get(idx(t))?.iter().filter_map(|s| s.1).collect::<Vec<_>>());
    let direct_stream = stream_median(Target::Direct);
    if options.stream {
        let _ = writeln!(w, "\nMasked stream: `psql -c \"{STREAM_SQL}\" > /dev/null`, 1,000,000 rows, medians:\n");
        let _ = writeln!(w, "| target | wall time | output | throughput | vs direct | proxy CPU |");
        let _ = writeln!(w, "|---|---|---|---|---|---|");
        for t in TARGETS {
            let Some(secs) = stream_median(t) else { continue };
            let bytes = samples.get(idx(t)).and_then(Option::as_ref).map_or(0, |s| s.0);
            let mb_s = bytes as f64 / 1e6 / secs;
            let _ = writeln!(
                w,
                "| {} | {secs:.3} s | {:.1} MB | {mb_s:.1} MB/s | {} | {} |",
                t.name(),
                bytes as f64 / 1e6,
                fmt_opt(ratio(direct_stream, Some(secs)), 2),
                stream_cpu(t).map_or_else(|| "–".to_string(), |c| format!("{c:.2} s")),
            );
        }
        for t in TARGETS {
            if let Some(Some((_, first))) = samples.get(idx(t)) {
                let _ = writeln!(w, "\nfirst line, {}: `{}`", t.name(), first.replace('\t', "\\t"));
            }
        }
    }

    let idle_kib = idle.map(|[base, half, all]| {
        let n = options.idle_connections as f64;
        let per = all.saturating_sub(base) as f64 / n;
        let slope = all.saturating_sub(half) as f64 / (n - (options.idle_connections / 2) as f64).max(1.0);
        let _ = writeln!(
            w,
            "\nIdle connections: gateway VmRSS {base} KiB with none, {half} KiB with {}, {all} KiB with {}: \
             {per:.1} KiB per connection ({slope:.1} KiB per connection over the second half).",
            options.idle_connections / 2,
            options.idle_connections
        );
        per
    });

    let _ = writeln!(w, "\nTargets:\n");
    for (name, r) in &gw_vs_relay {
        let _ =
            writeln!(w, "- `{name}`: gateway ≥ 0.95× relay: {} ({}×)", verdict(r.map(|r| r >= 0.95)), fmt_opt(*r, 2));
    }
    let c16 = gw_vs_pgb.iter().find(|(n, _)| *n == "select-prepared-c16").and_then(|(_, r)| *r);
    let _ = writeln!(
        w,
        "- `select-prepared-c16`: gateway ≥ 1.0× pgbouncer: {} ({}×)",
        verdict(c16.map(|r| r >= 1.0)),
        fmt_opt(c16, 2)
    );
    for CpuTarget { name, gateway: g, relay: r, user_extra, statements } in &cpu_pairs {
        let extra = match (g, r) {
            (Some(g), Some(r)) => Some((g - r) / f64::from(*statements)),
            _ => None,
        };
        let _ = writeln!(
            w,
            "- `{name}`: gateway CPU ≤ relay's + 1.5 µs per statement: {} ({} vs {} µs per transaction of {statements}: \
             {} µs per statement more; in user space {} µs more)",
            verdict(extra.map(|e| e <= 1.5)),
            fmt_opt(*g, 1),
            fmt_opt(*r, 1),
            fmt_opt(extra, 1),
            fmt_opt(*user_extra, 1)
        );
    }
    let stream_ratio = ratio(direct_stream, stream_median(Target::Gateway));
    let _ = writeln!(
        w,
        "- masked stream ≥ 0.95× direct throughput: {} ({}×)",
        verdict(stream_ratio.map(|r| r >= 0.95)),
        fmt_opt(stream_ratio, 2)
    );
    let _ = writeln!(
        w,
        "- idle connection ≤ 24 KiB: {} ({} KiB)",
        verdict(idle_kib.map(|k| k <= 24.0)),
        fmt_opt(idle_kib, 1)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::Options;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        Options::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    /// `--alternate` is a way of running `--audit`'s comparison, and
    /// means nothing without it.
    #[test]
    fn alternating_runs_go_with_the_audit_comparison() {
        let Ok(Some(options)) = parse(&["--audit", "--alternate", "--reps", "200", "--duration", "3"]) else {
            panic!("--audit --alternate is accepted")
        };
        assert!(options.alternate && options.audit);
        assert_eq!((options.reps, options.duration), (200, 3));
        assert_eq!(parse(&["--alternate"]).err().as_deref(), Some("--alternate goes with --audit"));
        let Ok(Some(plain)) = parse(&["--audit"]) else { panic!("--audit is accepted") };
        assert!(!plain.alternate);
    }
}
