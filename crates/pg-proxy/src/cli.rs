//! Command-line interface.
//!
//! Exit codes, for scripts: `0` success; `1` the policy cannot be read or
//! is invalid, or (`policy test`) a test failed; `2` bad usage, including a
//! pseudonymisation key that is needed and not given, or cannot be read.
//!
//! The `policy` commands take the key of `hash` masks from
//! `--pseudonym-key-file` (the file's bytes, read as the gateway reads
//! `[masking] pseudonym_key_file`), or else from the environment variable
//! [`PSEUDONYM_KEY_ENV`]. The key is never printed.

use std::env::VarError;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use std::sync::Arc;
use std::time::Duration;

use pg_proxy::catalog::Catalog;
use pg_proxy::codec::DEFAULT_MAX_MESSAGE_BYTES;
use pg_proxy::config::{Secret, Upstream};
use pg_proxy::upstream::Target;
use policy_core::{Actor, Decision, Definitions, Engine, Identity, Keys, Policy, PolicyError, Session};
use serde::Deserialize;

/// `println!` for the commands' output: a reader that went away
/// (`pg-proxy policy explain ... | head -1`) ends the program quietly, with
/// exit 0, as a filter's reader closing early is no failure; any other
/// write error is one (exit 1).
macro_rules! say {
    ($($arg:tt)*) => {
        say_line(format_args!($($arg)*))
    };
}

fn say_line(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

/// `say!` for the lines of a command whose exit code is a verdict (`policy
/// test`, `audit verify`, `audit check-proof`): a reader that went away
/// does not end the program, so the exit code stays the verdict's (a
/// script with `set -o pipefail` relies on it); the lines are dropped.
macro_rules! report {
    ($($arg:tt)*) => {
        report_line(format_args!($($arg)*))
    };
}

fn report_line(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

// After `say!` and `report!`, which they use.
mod admin_api;
mod approvals;
mod audit;
mod backtest;
mod sessions;

/// The environment variable the `policy` commands read the key of `hash`
/// masks from when no `--pseudonym-key-file` is given.
const PSEUDONYM_KEY_ENV: &str = "PORTCULLIS_PSEUDONYM_KEY";

/// Portcullis: a policy-enforcing gateway for PostgreSQL.
#[derive(Parser)]
#[command(name = "pg-proxy", version, about, long_about = None)]
#[command(after_help = "Exit codes: 0 success, 1 invalid policy or failed test, 2 bad usage \
                        (or a pseudonymisation key needed and not given).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check, test and explain policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Development keys and tokens (never for production identities).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit log: keys, verification, receipts, sessions, replay
    /// (`policy backtest` decides its statements again under a new policy).
    ///
    /// Exit codes: 0 success (verify: intact); 1 tampered, or a receipt
    /// that does not check; 2 bad usage or unreadable input.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Decide statements a gateway holds for approval: list, show,
    /// approve (optionally as a grant), deny, and manage grants, through
    /// the gateway's admin API (`[admin]`) with your own token.
    ///
    /// Exit codes: 0 success; 1 the gateway refused (its message is
    /// printed); 2 bad usage or no token; 3 the admin server could not be
    /// reached.
    Approvals(approvals::ApprovalsArgs),
    /// List a running gateway's live sessions (who, agent, client, state,
    /// the fingerprint of the statement running or held, age) and end
    /// them, through its admin API (`[admin]`) with your own token.
    ///
    /// Exit codes: 0 success; 1 the gateway refused (its message is
    /// printed); 2 bad usage or no token; 3 the admin server could not be
    /// reached.
    Sessions(sessions::SessionsArgs),
    /// Run the gateway.
    ///
    /// Clients connect as to PostgreSQL and log in with an OIDC token as the
    /// password; the gateway decides every statement with the policy and
    /// masks every result row. SIGHUP reloads the policy, the key set and the
    /// TLS certificate (a file that does not load is refused and the one in
    /// force kept); SIGTERM or Ctrl-C
    /// stops. Logs go to standard error (see --log-format, --log-level).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Start a throwaway PostgreSQL with sample data, the gateway in front
    /// of it, and print how to connect as a person and as an AI agent.
    ///
    /// Everything lives in a temporary directory; Ctrl-C, SIGTERM or SIGHUP stops it all and
    /// removes it. Needs PostgreSQL's server binaries (`initdb`, `pg_ctl`;
    /// `scripts/demo` installs them with apt when missing). With --script,
    /// plays a short agent session (a masked read, a refused DROP TABLE, a
    /// refused unbounded DELETE, a bulk read stopped by the row cap, a
    /// DELETE held until a person approves it) and exits.
    Demo {
        /// The policy (default: examples/policy.toml).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// The gateway's port (default: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// The admin server's port: the approvals inbox and API (default:
        /// any free port).
        #[arg(long, default_value_t = 0)]
        admin_port: u16,
        /// Play the scripted agent session, then exit.
        #[arg(long)]
        script: bool,
        /// Keep the demo's audit log (and its signing key) in DIR, to read
        /// it afterwards with `pg-proxy audit` (default: in the temporary
        /// directory, removed at the end).
        #[arg(long, value_name = "DIR")]
        audit_dir: Option<PathBuf>,
        /// The gateway's log (off unless --log-level or RUST_LOG is given).
        #[command(flatten)]
        log: LogArgs,
    },
    /// Check a gateway configuration and everything it names (policy, key
    /// set, TLS certificates and keys, the upstream CA file), without
    /// starting.
    ///
    /// Exit 0 when everything loads, 1 when something does not. Warnings
    /// (an upstream connection whose certificate is not verified, or that
    /// crosses the network in the clear) go to standard error and do not
    /// change the exit code.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// The configuration file, as `--config` (kept for scripts that
        /// name it so).
        #[arg(value_name = "FILE", hide = true)]
        file: Option<PathBuf>,
    },
    /// Print a completion script for a shell to standard output.
    ///
    /// bash: `pg-proxy completions bash > /etc/bash_completion.d/pg-proxy`;
    /// zsh: into a directory of `$fpath` as `_pg-proxy`; fish:
    /// `pg-proxy completions fish > ~/.config/fish/completions/pg-proxy.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to standard output:
    /// `pg-proxy man > pg-proxy.1`, then `man ./pg-proxy.1`.
    Man,
}

/// The gateway's configuration file, named the same way by every command.
#[derive(Args)]
struct ConfigArg {
    /// The configuration file (TOML; examples/gateway.toml shows every key).
    #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// The file, or a usage error (exit 2).
    fn path(self, positional: Option<PathBuf>) -> Result<PathBuf, ExitCode> {
        positional.or(self.config).ok_or_else(|| {
            eprintln!("error: no configuration: give --config FILE or set PORTCULLIS_CONFIG");
            ExitCode::from(2)
        })
    }
}

/// Logging switches of the long-running commands. Logs go to standard
/// error, coloured only when it is a terminal (and NO_COLOR is not set).
#[derive(Args, Clone)]
struct LogArgs {
    /// Log line format: `text` for people, `json` for one JSON object per
    /// line.
    #[arg(long, value_enum, value_name = "FORMAT", env = "PORTCULLIS_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// What to log: a level (`error`, `warn`, `info`, `debug`, `trace`) or a
    /// filter such as `info,pg_proxy=debug`. Default: RUST_LOG, else `info`.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Write a development signing key and its JWKS into a directory.
    ///
    /// Writes DIR/signing-key.pem (PKCS#8, mode 0600) and DIR/jwks.json,
    /// the public key set the gateway verifies tokens with.
    Keygen {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Key type.
        #[arg(long, value_enum, default_value = "ed25519")]
        key_type: pg_proxy::token::KeyType,
    },
    /// Print a signed development JWT.
    ///
    /// Example: pg-proxy token mint --key dev/signing-key.pem --sub alice@example.com
    /// --groups developers --actor copilot-7 --ttl 1h
    Mint {
        /// The private key from `token keygen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The subject (`sub`).
        #[arg(long)]
        sub: String,
        /// Groups, comma-separated (`groups` claim).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The agent acting for the subject (RFC 8693 `act`).
        #[arg(long)]
        actor: Option<String>,
        /// Lifetime: 90s, 15m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Issuer (`iss`).
        #[arg(long)]
        iss: Option<String>,
        /// Audience (`aud`).
        #[arg(long)]
        aud: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load a policy and report the first problem with its file:line:column.
    ///
    /// Runs nothing. Exit 0 when the policy is valid, 1 when it is not. A
    /// policy with `hash` masks is valid without a pseudonymisation key: a
    /// note on standard error says the gateway will need one. With
    /// --pseudonym-key-file (or PORTCULLIS_PSEUDONYM_KEY set) the key is
    /// read too (exit 2 when it cannot be).
    Check {
        /// The policy file (TOML).
        file: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Run the `[[test]]` entries of a policy file.
    ///
    /// Prints each failing test with the decision the engine reached; exit 1
    /// when any test fails (or the policy is invalid). A policy with `hash`
    /// masks needs the pseudonymisation key: --pseudonym-key-file or
    /// PORTCULLIS_PSEUDONYM_KEY (exit 2 without it).
    Test {
        /// The policy file (TOML).
        file: PathBuf,
        /// Print passing tests too.
        #[arg(short, long)]
        verbose: bool,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Show the decision the engine reaches for a SQL string, as JSON.
    ///
    /// With --jsonl, reads one request per line from standard input,
    /// `{"sql": "...", "subject": "...", "groups": [...], "actor": "...", "search_path": [...]}`
    /// (all but `sql` optional), and writes one decision per line in the same
    /// order; a line that cannot be read gives `{"error": "..."}` and the run
    /// goes on. Exit 0 unless the policy fails to load. A policy with `hash`
    /// masks needs the pseudonymisation key: --pseudonym-key-file or
    /// PORTCULLIS_PSEUDONYM_KEY (exit 2 without it).
    Explain(ExplainArgs),
    /// Decide every statement of an audit log again under a new policy and
    /// list those whose verdict would change.
    ///
    /// Each session is replayed in order with its identity and session
    /// state (its starting search_path, then the effects of the statements
    /// that ran). The baseline is the verdict each record carries (decided
    /// under the policy it names by digest), or --baseline's policy
    /// decided the same way. Changes are grouped by direction (newly
    /// refused, newly held, newly allowed) and rule, with counts and
    /// examples. Views are judged by name (the catalog is not read). Exit
    /// 0; 1 when --fail-on's direction has a change (or a policy is
    /// invalid); 2 bad usage or an unreadable log.
    Backtest {
        /// The policy to try (TOML).
        #[arg(long, value_name = "NEW.toml")]
        policy: PathBuf,
        /// The policy to compare with (default: the recorded verdicts).
        #[arg(long, value_name = "OLD.toml")]
        baseline: Option<PathBuf>,
        /// Exit 1 when a statement would be newly refused, or newly allowed.
        #[arg(long, value_enum)]
        fail_on: Option<backtest::FailOn>,
        /// One JSON object per changed statement.
        #[arg(long)]
        json: bool,
        /// The audit log directory.
        dir: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
}

/// The key of the policy's `hash` masks.
#[derive(Args)]
struct KeyArgs {
    /// The pseudonymisation key of `hash` masks (HMAC-SHA256): the file's
    /// bytes as they are, as the gateway reads `[masking]
    /// pseudonym_key_file`. Default: the value of the environment variable
    /// PORTCULLIS_PSEUDONYM_KEY. Never printed.
    #[arg(long, value_name = "FILE")]
    pseudonym_key_file: Option<PathBuf>,
}

#[derive(Args)]
struct ExplainArgs {
    /// The policy file (TOML).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// The caller's subject.
    #[arg(long, default_value = "cli-user")]
    subject: String,
    /// The caller's groups, comma-separated.
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// The agent acting for the subject.
    #[arg(long)]
    actor: Option<String>,
    /// The session's search_path, comma-separated (default: the policy's).
    #[arg(long, value_delimiter = ',')]
    search_path: Option<Vec<String>>,
    /// Parse as a server with standard_conforming_strings = off.
    #[arg(long)]
    no_standard_conforming_strings: bool,
    /// Batch mode: JSON requests on stdin, one decision per line on stdout.
    #[arg(long, conflicts_with = "sql")]
    jsonl: bool,
    /// Read the database's views from its catalog first and judge
    /// statements naming views by what they read, as the gateway does
    /// (with the policy's settings.views = "expand"). A libpq connection
    /// string over TCP: "host=db port=5432 user=app dbname=app
    /// sslmode=verify-full sslrootcert=ca.pem"; PGHOST, PGPORT, PGUSER,
    /// PGDATABASE, PGPASSWORD, PGSSLMODE and PGSSLROOTCERT fill in what it
    /// leaves out. Exit 2 when the views cannot be read.
    #[arg(long, value_name = "CONNINFO")]
    catalog: Option<String>,
    /// The SQL string to decide.
    #[arg(required_unless_present = "jsonl")]
    sql: Option<String>,
    #[command(flatten)]
    key: KeyArgs,
}

/// One `--jsonl` request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    sql: String,
    subject: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    actor: Option<String>,
    search_path: Option<Vec<String>>,
    standard_conforming_strings: Option<bool>,
}

pub(crate) fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log } => match config.path(None) {
            Ok(path) => serve(&path, &log),
            Err(code) => code,
        },
        Command::Check { config, file } => match config.path(file) {
            Ok(path) => check(&path),
            Err(code) => code,
        },
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "pg-proxy", &mut script);
            write_stdout(&script)
        }
        Command::Man => {
            let mut page = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut page) {
                Ok(()) => write_stdout(&page),
                Err(e) => {
                    eprintln!("error: the manual page: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Audit(command) => audit::run(command),
        Command::Approvals(args) => approvals::run(args),
        Command::Sessions(args) => sessions::run(args),
        Command::Demo { policy, port, admin_port, script, audit_dir, log } => {
            demo(pg_proxy::demo::DemoOptions { policy, port, admin_port, script, audit_dir }, &log)
        }
        Command::Token(TokenCommand::Keygen { out, key_type }) => match pg_proxy::token::keygen(&out, key_type) {
            Ok((key, jwks)) => {
                say!("wrote {} (private, development only)", key.display());
                say!("wrote {}", jwks.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Token(TokenCommand::Mint { key, sub, groups, actor, ttl, iss, aud }) => {
            let ttl_seconds = match pg_proxy::token::parse_ttl(&ttl) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: --ttl {e}");
                    return ExitCode::from(2);
                }
            };
            let groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
            let request = pg_proxy::token::MintRequest {
                key: &key,
                subject: &sub,
                groups: &groups,
                actor: actor.as_deref(),
                ttl_seconds,
                issuer: iss.as_deref(),
                audience: aud.as_deref(),
            };
            match pg_proxy::token::mint(&request) {
                Ok(token) => {
                    say!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Policy(PolicyCommand::Check { file, key }) => match load(&file, &key, MissingKey::Note) {
            Ok(engine) => {
                let p = engine.policy();
                say!(
                    "{}: ok ({} rules, {} masks, {} detectors, {} tests)",
                    file.display(),
                    p.rules.len(),
                    p.masks.len(),
                    p.detectors.len(),
                    p.tests.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Policy(PolicyCommand::Test { file, verbose, key }) => {
            let engine = match load(&file, &key, MissingKey::Refuse) {
                Ok(e) => e,
                Err(code) => return code,
            };
            test(&engine, verbose)
        }
        Command::Policy(PolicyCommand::Backtest { policy, baseline, fail_on, json, dir, key }) => {
            let new = match load(&policy, &key, MissingKey::Quiet) {
                Ok(e) => e,
                Err(code) => return code,
            };
            let old = match baseline.as_deref().map(|b| load(b, &key, MissingKey::Quiet)).transpose() {
                Ok(e) => e,
                Err(code) => return code,
            };
            backtest::run(&new, old.as_ref(), &dir, fail_on, json)
        }
        Command::Policy(PolicyCommand::Explain(args)) => {
            let engine = match load(&args.policy, &args.key, MissingKey::Refuse) {
                Ok(e) => e,
                Err(code) => return code,
            };
            let views = match args.catalog.as_deref().map(read_definitions).transpose() {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: --catalog: {e}");
                    return ExitCode::from(2);
                }
            };
            if args.jsonl {
                explain_jsonl(&engine, &args, views.as_ref())
            } else {
                explain_one(&engine, &args, views.as_ref())
            }
        }
    }
}

fn serve(path: &Path, log: &LogArgs) -> ExitCode {
    if let Err(e) = init_logging(log) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match pg_proxy::config::Config::load(path) {
        Ok(config) => {
            let threads = config.limits.worker_threads;
            run_async_with(threads, pg_proxy::server::run(config))
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(options: pg_proxy::demo::DemoOptions, log: &LogArgs) -> ExitCode {
    if log.log_level.is_some() || std::env::var_os("RUST_LOG").is_some() {
        if let Err(e) = init_logging(log) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    run_async(pg_proxy::demo::run(options))
}

/// Runs `work` on a multi-threaded runtime: exit 0, or 1 with the error.
fn run_async(work: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    run_async_with(0, work)
}

/// `run_async` with `threads` worker threads (0: one per CPU).
fn run_async_with(threads: usize, work: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    // Statements are decided on the workers. tokio's default 2 MiB of stack
    // is enough for the engine (policy-core docs, "Resource usage"), with
    // little room in a debug build; an overflow aborts every session, so
    // 8 MiB, of which only what is touched is resident.
    let outcome = builder
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))
        .and_then(|runtime| runtime.block_on(work));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let mut config = match pg_proxy::config::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The audit log's key is loaded; the log itself is neither opened nor
    // written.
    if let Some(audit) = config.audit.take() {
        if let Err(e) = pg_proxy::audit::load_signer(&audit.signing_key_file, &audit.origin) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    match pg_proxy::server::Gateway::new(config) {
        Ok(gw) => {
            for warning in gw.config.upstream.warnings() {
                eprintln!("warning: {warning}");
            }
            let engine = gw.engine();
            let p = engine.policy();
            say!(
                "{}: ok (listen {}, upstream {}:{} tls {}, policy {} with {} rules, {} masks, {} detectors)",
                path.display(),
                gw.config.listen,
                gw.config.upstream.host,
                gw.config.upstream.port,
                gw.config.upstream.tls.name(),
                gw.config.policy.display(),
                p.rules.len(),
                p.masks.len(),
                p.detectors.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `bytes` to standard output; a closed pipe (`| head`) is not an
/// error worth a message.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing to standard output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error: `--log-level` (else `RUST_LOG`, else `info`)
/// filters, `--log-format` picks text or JSON lines; colour only on a
/// terminal, and never with `NO_COLOR` set.
fn init_logging(args: &LogArgs) -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = match &args.log_level {
        Some(level) => {
            tracing_subscriber::EnvFilter::try_new(level).map_err(|e| format!("--log-level {level:?}: {e}"))?
        }
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// What [`load`] does with a policy that needs a pseudonymisation key it
/// was not given.
#[derive(Clone, Copy)]
enum MissingKey {
    /// `policy check`: the policy is valid; a note says the gateway will
    /// need the key.
    Note,
    /// `policy test` and `policy explain`: an error (exit 2).
    Refuse,
    /// `policy backtest`: decisions need no key (masks are not applied),
    /// and nothing is said.
    Quiet,
}

/// The key of `hash` masks: `--pseudonym-key-file`, or else
/// [`PSEUDONYM_KEY_ENV`]; `None` when neither is given. Errors never
/// include the key.
fn pseudonym_key(args: &KeyArgs) -> Result<Option<Secret>, String> {
    if let Some(path) = &args.pseudonym_key_file {
        return pg_proxy::config::read_pseudonym_key_file(path)
            .map(Some)
            .map_err(|e| format!("--pseudonym-key-file `{}`: {e}", path.display()));
    }
    match std::env::var(PSEUDONYM_KEY_ENV) {
        Ok(value) => Ok(Some(Secret::new(value.into_bytes()))),
        Err(VarError::NotPresent) => Ok(None),
        Err(VarError::NotUnicode(_)) => Err(format!("the environment variable {PSEUDONYM_KEY_ENV} is not UTF-8")),
    }
}

fn load(path: &Path, key: &KeyArgs, missing: MissingKey) -> Result<Engine, ExitCode> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        eprintln!("error: cannot read policy `{name}`: {e}");
        ExitCode::FAILURE
    })?;
    let policy = Policy::from_toml_str(&text, &name).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })?;
    let key = pseudonym_key(key).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    let given = key.is_some();
    let keys = Keys { pseudonym_key: key.map(|k| k.expose().to_vec()) };
    match Engine::new(policy.clone(), keys) {
        Ok(engine) => Ok(engine),
        Err(e @ PolicyError::Keys { .. }) if !given => match missing {
            MissingKey::Quiet => Engine::new(policy, Keys { pseudonym_key: Some(Vec::new()) }).map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }),
            MissingKey::Note => {
                eprintln!(
                    "note: {e}: the gateway will need it ([masking] pseudonym_key_env or pseudonym_key_file), \
                     and so will `policy test` and `policy explain` (--pseudonym-key-file or {PSEUDONYM_KEY_ENV})"
                );
                // The rest of the policy is checked with a stand-in key,
                // used for nothing else.
                Engine::new(policy, Keys { pseudonym_key: Some(Vec::new()) }).map_err(|e| {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                })
            }
            MissingKey::Refuse => {
                eprintln!(
                    "error: {e}: give it with --pseudonym-key-file FILE or in the environment variable \
                     {PSEUDONYM_KEY_ENV}"
                );
                Err(ExitCode::from(2))
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn identity(subject: &str, groups: &[String], actor: Option<&str>) -> Identity {
    let mut id = Identity::new(subject).with_groups(groups.iter().filter(|g| !g.is_empty()).cloned());
    if let Some(a) = actor {
        id = id.with_actor(Actor::new(a));
    }
    id
}

/// The views of the database `conninfo` names, read as the gateway reads them.
fn read_definitions(conninfo: &str) -> Result<Arc<Definitions>, String> {
    let upstream = Upstream::from_conninfo(conninfo, |var| std::env::var(var).ok())?;
    let database = upstream.database.clone().unwrap_or_default();
    let target = Target::new(&upstream, DEFAULT_MAX_MESSAGE_BYTES)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let views = runtime.block_on(async {
        let catalog = Catalog::new(target, Duration::from_secs(3600));
        let watch = catalog.definitions(&database).await;
        let views = Arc::clone(&watch.borrow());
        views
    });
    match views.unavailable_reason() {
        Some(reason) => Err(format!("cannot read the views of database {database}: {reason}")),
        None => Ok(views),
    }
}

fn session(engine: &Engine, search_path: Option<&Vec<String>>, scs: bool, views: Option<&Arc<Definitions>>) -> Session {
    let mut s = engine.new_session();
    s.definitions = views.cloned();
    if let Some(p) = search_path {
        // The session starts there, and a RESET returns there, as on the
        // server for a client that gave it at login.
        s = s.with_startup_search_path(p.clone());
    }
    s.standard_conforming_strings = scs;
    s
}

fn explain_one(engine: &Engine, args: &ExplainArgs, views: Option<&Arc<Definitions>>) -> ExitCode {
    let id = identity(&args.subject, &args.groups, args.actor.as_deref());
    let s = session(engine, args.search_path.as_ref(), !args.no_standard_conforming_strings, views);
    let decision = engine.decide(&id, &s, args.sql.as_deref().unwrap_or_default());
    match serde_json::to_string_pretty(&decision) {
        Ok(json) => say!("{json}"),
        Err(_) => say!("{}", decision.to_json()),
    }
    ExitCode::SUCCESS
}

fn error_line(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

fn explain_jsonl(engine: &Engine, args: &ExplainArgs, views: Option<&Arc<Definitions>>) -> ExitCode {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: reading standard input: {e}");
                break;
            }
        }
        number += 1;
        let answer = match decide_line(engine, args, views, &line) {
            Ok(d) => d.to_json(),
            Err(msg) => error_line(&format!("line {number}: {msg}")),
        };
        if writeln!(out, "{answer}").and_then(|()| out.flush()).is_err() {
            // The reader went away: nothing left to do.
            return ExitCode::SUCCESS;
        }
    }
    ExitCode::SUCCESS
}

fn decide_line(
    engine: &Engine,
    args: &ExplainArgs,
    views: Option<&Arc<Definitions>>,
    line: &[u8],
) -> Result<Decision, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not UTF-8: {e}"))?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return Err("empty line: expected a JSON object".to_string());
    }
    let req: Request = serde_json::from_str(text).map_err(|e| format!("not a request: {e}"))?;
    let subject = req.subject.as_deref().unwrap_or(&args.subject);
    let id = identity(subject, &req.groups, req.actor.as_deref());
    let scs = req.standard_conforming_strings.unwrap_or(!args.no_standard_conforming_strings);
    let s = session(engine, req.search_path.as_ref().or(args.search_path.as_ref()), scs, views);
    Ok(engine.decide(&id, &s, &req.sql))
}

fn test(engine: &Engine, verbose: bool) -> ExitCode {
    let outcomes = engine.run_tests();
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    for o in &outcomes {
        let label = o.test.name.clone().unwrap_or_else(|| o.test.sql.clone());
        if o.passed {
            if verbose {
                report!("ok    {}  {label}", o.test.location);
            }
            continue;
        }
        let expected_rule = match o.test.rule.as_deref() {
            Some("") => " (no rule)".to_string(),
            Some(r) => format!(" by rule `{r}`"),
            None => String::new(),
        };
        let got_rule = o.decision.rule.as_deref().map_or_else(|| "no rule".to_string(), |r| format!("rule `{r}`"));
        report!("FAIL  {}  {label}", o.test.location);
        report!("      expected {}{expected_rule}", o.test.expect);
        report!("      got      {} by {got_rule}: {}", o.decision.verdict, o.decision.reason);
        report!("      decision {}", o.decision.to_json());
    }
    report!("{} passed, {} failed", outcomes.len() - failed, failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
