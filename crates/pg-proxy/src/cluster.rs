//! Throwaway PostgreSQL clusters, for the `pg-proxy demo` command and the
//! integration tests: a real server (`initdb` + `pg_ctl`) in a fresh
//! temporary directory, listening on a free port of 127.0.0.1, removed again
//! when the [`Cluster`] is dropped.
//!
//! ```no_run
//! use pg_proxy::cluster::{Auth, Cluster, ClusterOptions};
//!
//! let cluster = Cluster::start(&ClusterOptions { auth: Auth::Md5, ..ClusterOptions::default() })?;
//! cluster.create_role("app", "app-secret", false)?;
//! cluster.create_database("appdb", "app")?;
//! assert_eq!(cluster.psql("appdb", "SELECT 1")?, "1");
//! println!("connect with: {}", cluster.connection_string("appdb"));
//! cluster.stop()?; // or just drop it
//! # Ok::<(), pg_proxy::cluster::ClusterError>(())
//! ```
//!
//! # Where the binaries come from
//!
//! `initdb`, `pg_ctl` and `postgres` are looked for in `$PG_BIN` when it is
//! set (and only there), else in `pg_config --bindir`, else in the newest
//! `/usr/lib/postgresql/*/bin` (Debian) or `/usr/pgsql-*/bin` (RPM), else on
//! `PATH`. `psql` is taken from the same directory, else from `PATH`.
//!
//! # Running as root
//!
//! PostgreSQL refuses to run as root. When the effective uid is 0, the server
//! programs run as the `postgres` system user (else `nobody`) through
//! `runuser -u USER --` (else `su -s /bin/sh USER -c`), and the temporary
//! directory is owned by that user. It is created under
//! [`std::env::temp_dir`], or under `/tmp` when that directory is not
//! traversable by other users or its path is too long for a Unix socket.
//! `psql` itself runs as the calling user: it connects over TCP.
//!
//! # Authentication
//!
//! `pg_hba.conf` has `host all all 127.0.0.1/32 METHOD` with the method of
//! [`ClusterOptions::auth`], and `local all all scram-sha-256` (`md5` for an
//! [`Auth::Md5`] cluster, whose passwords are all stored as MD5 hashes).

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use rand::distributions::Alphanumeric;
use rand::Rng as _;

/// The address every cluster listens on.
const HOST: &str = "127.0.0.1";
/// How many free ports [`Cluster::start`] tries before giving up.
const PORT_ATTEMPTS: u32 = 5;
/// How many lines of a log or of a command's output an error quotes.
const TAIL_LINES: usize = 20;
/// Unix socket paths are limited to about 107 bytes; keep ours well below.
const MAX_DIR_LEN: usize = 80;
/// The environment variable that keeps cluster directories for debugging.
pub const KEEP_ENV: &str = "PORTCULLIS_KEEP_CLUSTER";

/// The password authentication method of the cluster's `host` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auth {
    /// `scram-sha-256` (PostgreSQL's default since 14).
    #[default]
    Scram,
    /// `md5`, with `password_encryption = md5` so that every password
    /// (the superuser's too) is stored as an MD5 hash. Deprecated in
    /// PostgreSQL 18, which warns when such a password is set.
    Md5,
    /// `trust`: any password, or none, is accepted.
    Trust,
}

impl Auth {
    /// The method's name in `pg_hba.conf`.
    pub fn hba_method(self) -> &'static str {
        match self {
            Auth::Scram => "scram-sha-256",
            Auth::Md5 => "md5",
            Auth::Trust => "trust",
        }
    }
}

/// How to set up a [`Cluster`].
#[derive(Clone)]
pub struct ClusterOptions {
    /// The bootstrap superuser's name (default `portcullis_admin`).
    pub superuser: String,
    /// The superuser's password; `None` (the default) generates a random
    /// 24-character alphanumeric one, see [`Cluster::password`].
    pub password: Option<String>,
    /// The authentication method for TCP connections (default SCRAM).
    pub auth: Auth,
    /// `max_connections` (default 100).
    pub max_connections: u32,
    /// `shared_buffers` (default `32MB`).
    pub shared_buffers: String,
    /// Keep the cluster's directory after it is stopped (default false; the
    /// environment variable `PORTCULLIS_KEEP_CLUSTER=1` does the same).
    pub keep: bool,
    /// Extra `postgresql.conf` lines, written after the others, e.g.
    /// `"log_statement = 'all'"`.
    pub extra_config: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            superuser: "portcullis_admin".to_owned(),
            password: None,
            auth: Auth::Scram,
            max_connections: 100,
            shared_buffers: "32MB".to_owned(),
            keep: false,
            extra_config: Vec::new(),
        }
    }
}

impl fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("superuser", &self.superuser)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("auth", &self.auth)
            .field("max_connections", &self.max_connections)
            .field("shared_buffers", &self.shared_buffers)
            .field("keep", &self.keep)
            .field("extra_config", &self.extra_config)
            .finish()
    }
}

/// What went wrong setting up, using or stopping a [`Cluster`].
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `initdb`, `pg_ctl` and `postgres` were not found together anywhere.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; searched: {}. \
         Install them (e.g. `apt-get install postgresql`, or run scripts/install-deps) or set PG_BIN",
        .searched.join("; ")
    )]
    BinariesNotFound {
        /// The places searched, in order.
        searched: Vec<String>,
    },
    /// A client program (`psql`) was not found.
    #[error(
        "`{program}` not found; searched: {}. Install it (e.g. `apt-get install postgresql-client`)",
        .searched.join("; ")
    )]
    ClientNotFound {
        /// The program looked for.
        program: String,
        /// The places searched, in order.
        searched: Vec<String>,
    },
    /// Running as root, but no unprivileged user or no way to switch to it.
    #[error("running as root and PostgreSQL refuses to run as root: {0}")]
    NoUnprivilegedUser(String),
    /// A program could not be started at all.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// A program ran and failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        /// The command line (passwords left out).
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its standard error (or output, when the error was empty).
        output: String,
    },
    /// `pg_ctl start` failed, or the server did not accept connections.
    #[error("PostgreSQL did not start on port {port}: {reason}\nlast lines of {}:\n{log_tail}", .log.display())]
    StartFailed {
        /// The last port tried.
        port: u16,
        /// The server log.
        log: PathBuf,
        /// What was seen (pg_ctl's error output, or a timeout).
        reason: String,
        /// The last lines of the server log.
        log_tail: String,
    },
    /// A file system operation failed.
    #[error("could not {action} {}: {source}", .path.display())]
    Io {
        /// What was being done ("create directory", "write", ...).
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A name, password or path that cannot be used.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What it is ("role name", "path", ...).
        what: &'static str,
        /// The value.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

/// The unprivileged user the server programs run as when we are root.
#[derive(Debug, Clone)]
struct RunAs {
    user: String,
    uid: u32,
    gid: u32,
    via: Switch,
}

/// How to run a program as [`RunAs::user`].
#[derive(Debug, Clone)]
enum Switch {
    Runuser(PathBuf),
    Su(PathBuf),
}

/// A running throwaway PostgreSQL cluster. Dropping it stops the server
/// (`pg_ctl stop -m immediate`) and removes its directory.
pub struct Cluster {
    dir: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    superuser: String,
    password: String,
    auth: Auth,
    run_as: Option<RunAs>,
    keep: bool,
    finished: bool,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir)
            .field("bin_dir", &self.bin_dir)
            .field("port", &self.port)
            .field("superuser", &self.superuser)
            .field("password", &"<redacted>")
            .field("auth", &self.auth)
            .field("run_as", &self.run_as.as_ref().map(|r| r.user.as_str()))
            .field("keep", &self.keep)
            .finish()
    }
}

impl Cluster {
    /// Creates a cluster in a new temporary directory and starts it. Blocks
    /// for the few seconds this takes; from async code, call it through
    /// `tokio::task::spawn_blocking`.
    pub fn start(options: &ClusterOptions) -> Result<Cluster, ClusterError> {
        check_name("superuser name", &options.superuser)?;
        let password = match &options.password {
            Some(password) => password.clone(),
            None => random_alphanumeric(24),
        };
        if password.contains(['\0', '\n', '\r']) {
            return Err(invalid("password", "<redacted>", "contains a NUL or line break"));
        }
        let bin_dir = find_server_bin_dir()?;
        let run_as = if effective_uid() == Some(0) { Some(RunAs::pick()?) } else { None };
        let dir = create_temp_dir(run_as.as_ref())?;
        let keep = options.keep || keep_from_env();
        // From here on, an early return drops `cluster`, which cleans up.
        let mut cluster = Cluster {
            data_dir: dir.join("data"),
            log_path: dir.join("server.log"),
            dir,
            bin_dir,
            port: 0,
            superuser: options.superuser.clone(),
            password,
            auth: options.auth,
            run_as,
            keep,
            finished: false,
        };
        cluster.initdb()?;
        cluster.write_hba()?;
        cluster.start_server(options)?;
        if cluster.auth == Auth::Md5 {
            // initdb stored the superuser's password as SCRAM (an md5 line then
            // silently uses SCRAM); set it again now that password_encryption = md5.
            let sql =
                format!("ALTER ROLE {} PASSWORD {}", quote_ident(&cluster.superuser), quote_literal(&cluster.password));
            cluster.psql("postgres", &sql)?;
        }
        tracing::debug!(dir = %cluster.dir.display(), port = cluster.port, "PostgreSQL cluster started");
        Ok(cluster)
    }

    /// Stops the server and removes the directory (unless kept), reporting
    /// what failed; dropping the cluster does the same and only logs errors.
    pub fn stop(mut self) -> Result<(), ClusterError> {
        self.shutdown()
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions get `57P01`) and
    /// keeps the directory, for [`Cluster::start_again`]: what a database
    /// restart or failover looks like to its clients.
    pub fn stop_server(&self) -> Result<(), ClusterError> {
        self.run_server_program("pg_ctl", &self.pg_ctl_args("stop", &["-m", "fast"])).map(|_| ())
    }

    /// Starts the server [`Cluster::stop_server`] stopped, on the same port.
    pub fn start_again(&self) -> Result<(), ClusterError> {
        let log: OsString = self.log_path.clone().into();
        let args = self.pg_ctl_args("start", &["-l".as_ref(), log.as_os_str()]);
        self.run_server_program("pg_ctl", &args).map_err(|e| self.start_failed(e.to_string()))?;
        self.wait_accepting(Duration::from_secs(30))
    }

    /// `pg_ctl`'s arguments for `action` on this cluster, waiting up to 60 s.
    fn pg_ctl_args<S: AsRef<std::ffi::OsStr>>(&self, action: &str, extra: &[S]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-D".into(), self.data_dir.clone().into()];
        args.extend(extra.iter().map(|a| a.as_ref().to_os_string()));
        args.extend(["-w", "-t", "60", action].map(OsString::from));
        args
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The bootstrap superuser's name.
    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    /// The bootstrap superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The authentication method of the `host` line.
    pub fn auth(&self) -> Auth {
        self.auth
    }

    /// The temporary directory holding everything (also the Unix socket directory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory (`dir()/data`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (`dir()/server.log`).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The directory the server binaries were taken from.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A key=value connection string for the superuser, as tokio-postgres and
    /// psql take it: `host=127.0.0.1 port=N user=U password=P dbname=D`.
    pub fn connection_string(&self, db: &str) -> String {
        format!(
            "host={} port={} user={} password={} dbname={}",
            HOST,
            self.port,
            conninfo_value(&self.superuser),
            conninfo_value(&self.password),
            conninfo_value(db)
        )
    }

    /// Runs `sql` with `psql -X -v ON_ERROR_STOP=1 -At` as the superuser in
    /// database `db` and returns its standard output, without the final line
    /// break (so `SELECT 1` gives `"1"`).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        let psql = self.client_program("psql")?;
        let port = self.port.to_string();
        let mut command = Command::new(&psql);
        command
            .args(["-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-At", "-h", HOST, "-p", &port])
            .args(["-U", &self.superuser, "-d", db, "-c", sql])
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .stdin(Stdio::null());
        let description = format!("{} -h {HOST} -p {port} -U {} -d {db} -c {sql:?}", psql.display(), self.superuser);
        let output = command.output().map_err(|source| ClusterError::Spawn { command: description.clone(), source })?;
        check_output(description, &output)?;
        let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if stdout.ends_with('\n') {
            stdout.pop();
        }
        Ok(stdout)
    }

    /// Creates a login role with a password (stored as SCRAM, or MD5 in an
    /// [`Auth::Md5`] cluster), a superuser when `superuser` is true.
    pub fn create_role(&self, name: &str, password: &str, superuser: bool) -> Result<(), ClusterError> {
        check_name("role name", name)?;
        if password.contains('\0') {
            return Err(invalid("password", "<redacted>", "contains a NUL"));
        }
        let sql = format!(
            "CREATE ROLE {} LOGIN PASSWORD {}{}",
            quote_ident(name),
            quote_literal(password),
            if superuser { " SUPERUSER" } else { "" }
        );
        self.psql("postgres", &sql).map(drop)
    }

    /// Creates a database owned by `owner`.
    pub fn create_database(&self, name: &str, owner: &str) -> Result<(), ClusterError> {
        check_name("database name", name)?;
        check_name("role name", owner)?;
        let sql = format!("CREATE DATABASE {} OWNER {}", quote_ident(name), quote_ident(owner));
        self.psql("postgres", &sql).map(drop)
    }

    /// Runs `initdb` (the password file exists only while it runs).
    fn initdb(&self) -> Result<(), ClusterError> {
        let pwfile = self.dir.join("pwfile");
        self.write_owned_file(&pwfile, format!("{}\n", self.password).as_bytes(), 0o600)?;
        let mut pwfile_arg = OsString::from("--pwfile=");
        pwfile_arg.push(&pwfile);
        let args: Vec<OsString> = vec![
            "-D".into(),
            self.data_dir.clone().into(),
            "-U".into(),
            self.superuser.clone().into(),
            "--auth=scram-sha-256".into(),
            pwfile_arg,
            "-E".into(),
            "UTF8".into(),
            "--locale=C".into(),
            "--no-sync".into(),
        ];
        let result = self.run_server_program("initdb", &args);
        let removed = fs::remove_file(&pwfile).map_err(|source| io_error("remove", &pwfile, source));
        result?;
        removed?;
        // initdb creates it 0700 already; make sure, since the server refuses anything looser than 0750.
        set_mode(&self.data_dir, 0o700)
    }

    /// Replaces initdb's `pg_hba.conf`.
    fn write_hba(&self) -> Result<(), ClusterError> {
        let local = if self.auth == Auth::Md5 { "md5" } else { "scram-sha-256" };
        let text = format!(
            "# Written by pg_proxy::cluster.\n\
             # TYPE  DATABASE  USER  ADDRESS       METHOD\n\
             local   all       all                 {local}\n\
             host    all       all   127.0.0.1/32  {}\n",
            self.auth.hba_method()
        );
        self.write_owned_file(&self.data_dir.join("pg_hba.conf"), text.as_bytes(), 0o600)
    }

    /// Writes `portcullis.conf` for `port` (included from `postgresql.conf`).
    fn write_config(&self, options: &ClusterOptions, port: u16) -> Result<(), ClusterError> {
        let socket_dir = path_str(&self.dir)?;
        let encryption = if self.auth == Auth::Md5 { "md5" } else { "scram-sha-256" };
        let mut text = format!(
            "# Written by pg_proxy::cluster.\n\
             listen_addresses = '{HOST}'\n\
             port = {port}\n\
             unix_socket_directories = {}\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = {}\n\
             shared_buffers = {}\n\
             password_encryption = {encryption}\n\
             log_min_messages = warning\n\
             logging_collector = off\n",
            quote_literal(socket_dir),
            options.max_connections,
            quote_literal(&options.shared_buffers),
        );
        for line in &options.extra_config {
            text.push_str(line);
            text.push('\n');
        }
        self.write_owned_file(&self.data_dir.join("portcullis.conf"), text.as_bytes(), 0o600)
    }

    /// Picks a free port, writes the configuration and runs `pg_ctl start`,
    /// on another port when the chosen one was taken meanwhile.
    fn start_server(&mut self, options: &ClusterOptions) -> Result<(), ClusterError> {
        let main_conf = self.data_dir.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&main_conf)
            .map_err(|source| io_error("open", &main_conf, source))?;
        file.write_all(b"\n# Added by pg_proxy::cluster.\ninclude = 'portcullis.conf'\n")
            .map_err(|source| io_error("write", &main_conf, source))?;
        drop(file);

        let mut attempt = 1;
        loop {
            let port = free_port()?;
            self.port = port;
            self.write_config(options, port)?;
            let log_start = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
            let args: Vec<OsString> = vec![
                "-D".into(),
                self.data_dir.clone().into(),
                "-l".into(),
                self.log_path.clone().into(),
                "-w".into(),
                "-t".into(),
                "60".into(),
                "start".into(),
            ];
            match self.run_server_program("pg_ctl", &args) {
                Ok(_) => break,
                Err(err) => {
                    let log = self.read_log_from(log_start);
                    let port_taken =
                        ["could not bind", "Address already in use", "could not create any TCP/IP sockets"]
                            .iter()
                            .any(|marker| log.contains(marker));
                    if port_taken && attempt < PORT_ATTEMPTS {
                        tracing::debug!(port, attempt, "port taken while PostgreSQL started; trying another");
                        attempt += 1;
                        continue;
                    }
                    return Err(self.start_failed(err.to_string()));
                }
            }
        }
        self.wait_accepting(Duration::from_secs(10))
    }

    /// Waits until the port accepts TCP connections (pg_ctl -w normally has).
    fn wait_accepting(&self, timeout: Duration) -> Result<(), ClusterError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.start_failed(format!("no connection accepted within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_failed(&self, reason: String) -> ClusterError {
        ClusterError::StartFailed {
            port: self.port,
            log: self.log_path.clone(),
            reason,
            log_tail: tail(&self.read_log_from(0), TAIL_LINES),
        }
    }

    /// The server log from byte `offset` on (empty when unreadable).
    fn read_log_from(&self, offset: u64) -> String {
        let bytes = fs::read(&self.log_path).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0);
        String::from_utf8_lossy(bytes.get(start..).unwrap_or(&bytes)).into_owned()
    }

    /// Stops the server if it runs and removes the directory unless kept; once.
    fn shutdown(&mut self) -> Result<(), ClusterError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let mut result = Ok(());
        if self.data_dir.join("postmaster.pid").exists() {
            let args: Vec<OsString> = vec![
                "-D".into(),
                self.data_dir.clone().into(),
                "-m".into(),
                "immediate".into(),
                "-w".into(),
                "-t".into(),
                "60".into(),
                "stop".into(),
            ];
            if let Err(err) = self.run_server_program("pg_ctl", &args) {
                result = Err(err);
            }
        }
        if self.keep {
            eprintln!("portcullis: kept PostgreSQL cluster directory {} (port {})", self.dir.display(), self.port);
        } else if let Err(source) = fs::remove_dir_all(&self.dir) {
            if result.is_ok() {
                result = Err(io_error("remove", &self.dir, source));
            }
        }
        result
    }

    /// Runs a server program (`initdb`, `pg_ctl`) from the bin directory, as
    /// the unprivileged user when we are root, in the cluster directory.
    fn run_server_program(&self, program: &str, args: &[OsString]) -> Result<Output, ClusterError> {
        let program = self.bin_dir.join(program);
        let mut command = match &self.run_as {
            None => {
                let mut command = Command::new(&program);
                command.args(args);
                command
            }
            Some(RunAs { user, via: Switch::Runuser(runuser), .. }) => {
                let mut command = Command::new(runuser);
                command.args(["-u", user, "--"]).arg(&program).args(args);
                command
            }
            Some(RunAs { user, via: Switch::Su(su), .. }) => {
                let mut line = b"exec".to_vec();
                for word in std::iter::once(program.as_os_str()).chain(args.iter().map(OsString::as_os_str)) {
                    line.push(b' ');
                    line.extend(shell_quote(word.as_bytes()));
                }
                let mut command = Command::new(su);
                command.args(["-s", "/bin/sh", user, "-c"]).arg(OsString::from_vec(line));
                command
            }
        };
        command.current_dir(&self.dir).stdin(Stdio::null()).env_remove("PGDATA");
        let description = describe(&program, args, self.run_as.as_ref());
        let output = command.output().map_err(|source| ClusterError::Spawn { command: description.clone(), source })?;
        check_output(description, &output)?;
        Ok(output)
    }

    /// `program` from the bin directory, else from PATH.
    fn client_program(&self, program: &str) -> Result<PathBuf, ClusterError> {
        let candidate = self.bin_dir.join(program);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if let Some(found) = search_path(program) {
            return Ok(found);
        }
        Err(ClusterError::ClientNotFound {
            program: program.to_owned(),
            searched: vec![self.bin_dir.display().to_string(), "PATH".to_owned()],
        })
    }

    /// Writes a file and gives it to the unprivileged user, with `mode`.
    fn write_owned_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<(), ClusterError> {
        fs::write(path, contents).map_err(|source| io_error("write", path, source))?;
        set_mode(path, mode)?;
        chown_to(path, self.run_as.as_ref())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            tracing::warn!(dir = %self.dir.display(), error = %err, "could not clean up PostgreSQL cluster");
        }
    }
}

impl RunAs {
    /// The `postgres` user if it exists, else `nobody`, and runuser or su.
    fn pick() -> Result<RunAs, ClusterError> {
        let (user, uid, gid) = ["postgres", "nobody"]
            .iter()
            .find_map(|user| Some((*user, id_of(user, "-u")?, id_of(user, "-g")?)))
            .ok_or_else(|| {
                ClusterError::NoUnprivilegedUser("neither user `postgres` nor `nobody` exists".to_owned())
            })?;
        let via = if let Some(runuser) = find_system_program("runuser") {
            Switch::Runuser(runuser)
        } else if let Some(su) = find_system_program("su") {
            Switch::Su(su)
        } else {
            return Err(ClusterError::NoUnprivilegedUser(
                "neither `runuser` nor `su` found (apt-get install util-linux)".to_owned(),
            ));
        };
        Ok(RunAs { user: user.to_owned(), uid, gid, via })
    }
}

/// `id -u USER` or `id -g USER`.
fn id_of(user: &str, flag: &str) -> Option<u32> {
    let output = Command::new("id").args([flag, user]).stdin(Stdio::null()).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// The effective uid, from `/proc/self/status`, else `id -u`.
fn effective_uid() -> Option<u32> {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        let euid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|euid| euid.parse().ok());
        if euid.is_some() {
            return euid;
        }
    }
    let output = Command::new("id").arg("-u").stdin(Stdio::null()).output().ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

fn keep_from_env() -> bool {
    std::env::var_os(KEEP_ENV).is_some_and(|value| !value.is_empty() && value != "0")
}

/// Whether `dir` holds initdb, pg_ctl and postgres.
fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"].iter().all(|program| dir.join(program).is_file())
}

/// Finds the directory of initdb, pg_ctl and postgres (see the module docs).
fn find_server_bin_dir() -> Result<PathBuf, ClusterError> {
    let mut searched = Vec::new();
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        searched.push(format!("PG_BIN={} (set, so nothing else was searched)", dir.display()));
        return Err(ClusterError::BinariesNotFound { searched });
    }

    match Command::new("pg_config").arg("--bindir").stdin(Stdio::null()).output() {
        Ok(output) if output.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
            searched.push(format!("`pg_config --bindir` ({})", dir.display()));
        }
        _ => searched.push("`pg_config --bindir` (no pg_config)".to_owned()),
    }

    for (parent, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        let mut versions: Vec<(Vec<u64>, PathBuf)> = fs::read_dir(parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let version = name.to_str()?.strip_prefix(prefix)?;
                let key: Vec<u64> = version.split('.').map(str::parse).collect::<Result<_, _>>().ok()?;
                Some((key, entry.path().join("bin")))
            })
            .filter(|(_, bin)| has_server_binaries(bin))
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Ok(bin);
        }
        searched.push(format!("{parent}/{prefix}*/bin"));
    }

    if let Some(dir) =
        std::env::var_os("PATH").iter().flat_map(std::env::split_paths).find(|dir| has_server_binaries(dir))
    {
        return Ok(dir);
    }
    searched.push("PATH".to_owned());
    Err(ClusterError::BinariesNotFound { searched })
}

/// `program` on PATH.
fn search_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// `program` on PATH or in the sbin/bin directories root's PATH usually has.
fn find_system_program(program: &str) -> Option<PathBuf> {
    search_path(program).or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// Creates `<temp>/portcullis-pg-<pid>-<random>`, mode 0700, owned by the
/// unprivileged user when there is one.
fn create_temp_dir(run_as: Option<&RunAs>) -> Result<PathBuf, ClusterError> {
    let mut base = std::env::temp_dir();
    let too_long = base.as_os_str().len() > MAX_DIR_LEN - 30;
    if too_long || (run_as.is_some() && !traversable_by_others(&base)) {
        base = PathBuf::from("/tmp");
    }
    let mut last_error = None;
    for _ in 0..10 {
        let name = format!("portcullis-pg-{}-{}", std::process::id(), random_alphanumeric(8).to_lowercase());
        let path = base.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {
                set_mode(&path, 0o700)?;
                chown_to(&path, run_as)?;
                return Ok(path);
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(err),
            Err(source) => return Err(io_error("create directory", &path, source)),
        }
    }
    Err(io_error(
        "create a unique directory in",
        &base,
        last_error.unwrap_or_else(|| std::io::Error::other("no attempt made")),
    ))
}

/// Whether every directory from `/` down to `dir` has the x bit for others.
fn traversable_by_others(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else { return false };
    dir.ancestors().all(|ancestor| fs::metadata(ancestor).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ClusterError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| io_error("chmod", path, source))
}

fn chown_to(path: &Path, run_as: Option<&RunAs>) -> Result<(), ClusterError> {
    match run_as {
        Some(run_as) => std::os::unix::fs::chown(path, Some(run_as.uid), Some(run_as.gid))
            .map_err(|source| io_error("chown", path, source)),
        None => Ok(()),
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|source| io_error("bind", Path::new("127.0.0.1:0"), source))?;
    let addr =
        listener.local_addr().map_err(|source| io_error("read the address of", Path::new("127.0.0.1:0"), source))?;
    Ok(addr.port())
}

fn random_alphanumeric(len: usize) -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// Turns a failed exit status into [`ClusterError::CommandFailed`].
fn check_output(command: String, output: &Output) -> Result<(), ClusterError> {
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = if stderr.trim().is_empty() { String::from_utf8_lossy(&output.stdout) } else { stderr };
    Err(ClusterError::CommandFailed { command, status: output.status, output: tail(&text, TAIL_LINES) })
}

/// The command line for messages.
fn describe(program: &Path, args: &[OsString], run_as: Option<&RunAs>) -> String {
    let mut text = match run_as {
        Some(run_as) => format!("(as {}) {}", run_as.user, program.display()),
        None => program.display().to_string(),
    };
    for arg in args {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines.get(lines.len().saturating_sub(n)..).unwrap_or_default().join("\n")
}

/// `'word'` for sh, with `'` written as `'\''`.
fn shell_quote(word: &[u8]) -> Vec<u8> {
    let mut quoted = vec![b'\''];
    for &byte in word {
        if byte == b'\'' {
            quoted.extend_from_slice(b"'\\''");
        } else {
            quoted.push(byte);
        }
    }
    quoted.push(b'\'');
    quoted
}

/// An SQL identifier, always double-quoted.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal (standard_conforming_strings is on); also the
/// quoting of postgresql.conf values.
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A libpq key=value value, single-quoted when it needs to be.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_owned();
    }
    let mut quoted = String::from("'");
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

fn check_name(what: &'static str, name: &str) -> Result<(), ClusterError> {
    if name.is_empty() {
        return Err(invalid(what, name, "is empty"));
    }
    if name.contains('\0') {
        return Err(invalid(what, name, "contains a NUL"));
    }
    Ok(())
}

fn path_str(path: &Path) -> Result<&str, ClusterError> {
    path.to_str().ok_or_else(|| invalid("path", &path.to_string_lossy(), "is not UTF-8"))
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> ClusterError {
    ClusterError::Invalid { what, value: value.to_owned(), reason }
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> ClusterError {
    ClusterError::Io { action, path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(conninfo_value("plain"), "plain");
        assert_eq!(conninfo_value("a b'c\\"), r"'a b\'c\\'");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(shell_quote(b"it's"), b"'it'\\''s'".to_vec());
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
