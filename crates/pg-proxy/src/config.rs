//! The gateway's configuration file (TOML).
//!
//! ```toml
//! listen = "127.0.0.1:6432"          # where clients connect
//! policy = "policy.toml"             # relative paths are relative to this file
//!
//! [tls]                              # optional: TLS for clients (rustls)
//! cert = "server.crt"                # PEM certificate chain
//! key  = "server.key"                # PEM private key
//!
//! [auth]
//! jwks_file = "jwks.json"            # the identity provider's keys, or:
//! # jwks_url = "https://idp.example.com/.well-known/jwks.json"
//! # jwks_min_refresh = "30s"         # reload on an unknown key id at most this often
//! # jwks_max_age = "1h"              # reload a copy older than this
//! allow_cleartext_without_tls = false  # tokens over plain TCP from non-loopback clients
//!
//! [upstream]
//! host = "127.0.0.1"
//! port = 5432
//! user = "app"
//! password_env = "PORTCULLIS_UPSTREAM_PASSWORD"   # or password_file, or password
//! database = "app"                   # optional: pin the database; default: the client's
//! tls = "verify-full"                # libpq's sslmode: disable | allow | prefer | require | verify-ca | verify-full
//! ca_file = "db-ca.pem"              # the CAs that sign the server's certificate, or "system"
//!
//! [limits]
//! max_message_bytes = 67108864       # largest frontend message accepted
//! max_connections = 1000
//! login_timeout = "30s"
//! worker_threads = 0                 # runtime threads; 0: one per CPU
//!
//! [masking]
//! pseudonym_key_env = "PORTCULLIS_PSEUDONYM_KEY"  # for `hash` masks; or pseudonym_key_file
//!
//! [catalog]
//! refresh_interval = "1s"            # how often views changed by other connections are looked for
//! ```
//!
//! Every key, its default and its meaning: `docs/configuration.md` (a test
//! keeps it in step with the keys accepted here); a complete example:
//! `examples/gateway.toml`. Errors name the file, line and column
//! ([`ConfigError`]). The upstream
//! password is read when the configuration is loaded and is never printed:
//! [`Secret`]'s `Debug` writes `"***"`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::codec::DEFAULT_MAX_MESSAGE_BYTES;

/// What went wrong loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is invalid or a key has the wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// A value is well-formed but not usable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A secret value: never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Upstream TLS mode: libpq's `sslmode`, with libpq's meanings.
///
/// | mode | encrypted | certificate checked |
/// |---|---|---|
/// | `disable` | never | – |
/// | `allow` | only when the server refuses a plain login | no |
/// | `prefer` (default) | when the server offers TLS | no |
/// | `require` | always | no; the chain against `ca_file` when one is given (as libpq with a root certificate) |
/// | `verify-ca` | always | the chain against `ca_file` |
/// | `verify-full` | always | the chain, and the host name (or address) against the certificate |
///
/// ```
/// use pg_proxy::config::{UpstreamTls, Verification};
/// assert_eq!(UpstreamTls::VerifyFull.verification(true), Verification::ChainAndName);
/// assert_eq!(UpstreamTls::Require.verification(false), Verification::None);
/// assert_eq!(UpstreamTls::Require.verification(true), Verification::Chain);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// Plain TCP.
    Disable,
    /// Plain TCP; TLS (not verified) when the server refuses the plain login.
    Allow,
    /// TLS (not verified) when the server offers it, plain TCP otherwise.
    #[default]
    Prefer,
    /// TLS or no connection; verified against `ca_file` only when one is
    /// given.
    Require,
    /// TLS, the server's certificate chain verified against `ca_file`.
    VerifyCa,
    /// TLS, the chain verified and the certificate issued for `host`.
    VerifyFull,
}

impl UpstreamTls {
    /// The name in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamTls::Disable => "disable",
            UpstreamTls::Allow => "allow",
            UpstreamTls::Prefer => "prefer",
            UpstreamTls::Require => "require",
            UpstreamTls::VerifyCa => "verify-ca",
            UpstreamTls::VerifyFull => "verify-full",
        }
    }

    /// How the server's certificate is checked in this mode, `with_ca`
    /// telling whether `ca_file` is given.
    pub fn verification(self, with_ca: bool) -> Verification {
        match self {
            UpstreamTls::Disable | UpstreamTls::Allow | UpstreamTls::Prefer => Verification::None,
            UpstreamTls::Require if with_ca => Verification::Chain,
            UpstreamTls::Require => Verification::None,
            UpstreamTls::VerifyCa => Verification::Chain,
            UpstreamTls::VerifyFull => Verification::ChainAndName,
        }
    }
}

/// How the upstream server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Not at all: the connection is encrypted, but anyone in between can
    /// pose as the server.
    None,
    /// The chain must lead to a CA of `ca_file`; any name.
    Chain,
    /// The chain, and the certificate must name the configured host.
    ChainAndName,
}

/// Where the CA certificates that verify the upstream server come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file.
    File(PathBuf),
    /// The platform's store (`ca_file = "system"`, as libpq's
    /// `sslrootcert=system`): the system's CA bundle, or `SSL_CERT_FILE` /
    /// `SSL_CERT_DIR` when set.
    System,
}

/// The gateway's configuration, loaded and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The policy file.
    pub policy: PathBuf,
    /// Client TLS.
    pub tls: Option<TlsFiles>,
    /// Client authentication.
    pub auth: Auth,
    /// The database.
    pub upstream: Upstream,
    /// Limits.
    pub limits: Limits,
    /// The key of `hash` masks.
    pub pseudonym_key: Option<Secret>,
    /// The gateway's catalog reading.
    pub catalog: CatalogSettings,
    /// Whether refusals are enforced or only recorded.
    pub mode: Mode,
    /// The audit log, when one is kept.
    pub audit: Option<AuditSettings>,
    /// The admin HTTP server (approvals API and inbox), when configured:
    /// statements needing approval are held only when it is, since it is
    /// where people approve them.
    pub admin: Option<AdminSettings>,
    /// How approvals work.
    pub approvals: ApprovalSettings,
}

/// `[admin]`: the admin HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The URL people reach it at, for the notices held clients get
    /// (default: `https://` and `listen` when `[tls]` is set, `http://`
    /// otherwise).
    pub url: String,
    /// Groups whose members may list and end any session and reload the
    /// gateway (others see and end only their own sessions and their
    /// agents').
    pub operators: Vec<String>,
}

/// `[approvals]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// How long a held statement waits for people (default 15 minutes).
    pub timeout: Duration,
    /// The longest grant an approver may give (default 8 hours).
    pub max_grant: Duration,
    /// Where requests and outcomes are posted (it may hold a secret: never
    /// logged).
    pub webhook_url: Option<Secret>,
    /// Where requests and grants are kept.
    pub store: StoreKind,
    /// This gateway's name among replicas sharing a store (`[approvals]
    /// replica`, else `[audit] replica`, else the host name).
    pub replica: String,
}

/// `[approvals] store`: where requests and grants are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// In this gateway's memory (the default): one gateway, and nothing
    /// survives a restart.
    Memory,
    /// In PostgreSQL, shared by every replica pointed at the same
    /// database: the `portcullis` schema there, reached with the upstream
    /// credential.
    Postgres {
        /// The database holding the schema (`[approvals] database`, else
        /// `[upstream] database`, else the upstream user's name).
        database: String,
        /// The role the log is written as (`[approvals] user`): never the
        /// upstream role, which every client session runs as.
        user: String,
        /// Its password (`[approvals] password_file` or `password_env`).
        password: Option<Secret>,
    },
}

impl Default for ApprovalSettings {
    fn default() -> ApprovalSettings {
        ApprovalSettings {
            timeout: Duration::from_secs(15 * 60),
            max_grant: Duration::from_secs(8 * 3600),
            webhook_url: None,
            store: StoreKind::Memory,
            replica: "gateway".to_string(),
        }
    }
}

/// `mode`: what the gateway does with a statement the policy refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse it (the default).
    #[default]
    Enforce,
    /// Forward it, and record the verdict it would have had: for rolling a
    /// policy out. Needs `[audit]`.
    Observe,
}

/// `[audit] durability`: when the log is synced to disk before a
/// statement is forwarded (it is always written to the OS first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Before any statement that can make a change durable.
    #[default]
    Commit,
    /// Before every statement.
    Every,
    /// Never waited for (the OS writes it back in its own time).
    None,
}

/// `[audit]`: the tamper-evident log of every session.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The log's directory.
    pub dir: PathBuf,
    /// When the log is synced.
    pub durability: Durability,
    /// Size at which a segment file is closed and the next begun.
    pub segment_bytes: u64,
    /// Segments older than this are deleted; `None`: kept for ever.
    pub keep: Option<Duration>,
    /// The Ed25519 key (PKCS#8 PEM) that signs checkpoints.
    pub signing_key_file: PathBuf,
    /// The checkpoints' origin line and the key's name.
    pub origin: String,
    /// How often a checkpoint is signed while records arrive.
    pub checkpoint_interval: Duration,
    /// How long a sync may wait for other sessions' commits to join it.
    pub commit_delay: Duration,
    /// Record `Bind` parameters.
    pub record_parameters: bool,
    /// Masked result rows kept per statement.
    pub record_rows: usize,
    /// This gateway's name in session records (several replicas may share
    /// a log store).
    pub replica: String,
}

/// `[catalog]`.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    /// How often the gateway checks whether another connection changed
    /// the database's views (DDL through the gateway is seen at once).
    pub refresh_interval: Duration,
}

/// Certificate and key files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Client authentication settings.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Where the key set comes from.
    pub jwks: crate::auth::Source,
    /// When it is loaded again.
    pub refresh: crate::auth::Refresh,
    /// Accept tokens over plain TCP from non-loopback clients.
    pub allow_cleartext_without_tls: bool,
}

/// The upstream server and the credential the gateway holds.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database role.
    pub user: String,
    /// Its password (none for `trust`).
    pub password: Option<Secret>,
    /// The database every session uses; `None`: the client's choice.
    pub database: Option<String>,
    /// TLS mode.
    pub tls: UpstreamTls,
    /// CA certificates to verify the server with.
    pub ca_file: Option<RootCerts>,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
}

/// Limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frontend message accepted.
    pub max_message_bytes: usize,
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// Time a client has to complete the login.
    pub login_timeout: Duration,
    /// Threads of the runtime (0: one per CPU).
    pub worker_threads: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    policy: PathBuf,
    tls: Option<RawTls>,
    auth: RawAuth,
    upstream: RawUpstream,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    masking: RawMasking,
    #[serde(default)]
    catalog: RawCatalog,
    #[serde(default)]
    mode: Mode,
    audit: Option<RawAudit>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    approvals: RawApprovals,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    url: Option<String>,
    #[serde(default)]
    operators: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    timeout: Option<String>,
    max_grant: Option<String>,
    webhook_url: Option<String>,
    store: Option<String>,
    database: Option<String>,
    replica: Option<String>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    dir: PathBuf,
    #[serde(default)]
    durability: Durability,
    segment_bytes: Option<u64>,
    keep: Option<String>,
    signing_key_file: PathBuf,
    origin: Option<String>,
    checkpoint_interval: Option<String>,
    commit_delay: Option<String>,
    #[serde(default)]
    record_parameters: bool,
    #[serde(default)]
    record_rows: usize,
    replica: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    refresh_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    jwks_min_refresh: Option<String>,
    jwks_max_age: Option<String>,
    #[serde(default)]
    allow_cleartext_without_tls: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(default = "default_host")]
    host: String,
    #[serde(default = "default_port")]
    port: u16,
    user: String,
    password: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    database: Option<String>,
    #[serde(default)]
    tls: UpstreamTls,
    ca_file: Option<PathBuf>,
    connect_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_message_bytes: Option<usize>,
    max_connections: Option<usize>,
    login_timeout: Option<String>,
    worker_threads: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMasking {
    pseudonym_key_env: Option<String>,
    pseudonym_key_file: Option<PathBuf>,
}

fn default_host() -> String {
    "127.0.0.1".to_string()
}

fn default_port() -> u16 {
    5432
}

impl Config {
    /// Loads and checks the configuration file; reads the secrets it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_toml_str(&text, path, |name| std::env::var(name).ok())
    }

    /// Parses configuration text; `path` names it in errors and anchors
    /// relative paths; `env` reads environment variables.
    pub fn from_toml_str(text: &str, path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            ConfigError::Syntax { path: path.to_path_buf(), line, column, message: e.message().to_string() }
        })?;
        let invalid = |message: String| ConfigError::Invalid { path: path.to_path_buf(), message };
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };

        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            invalid(format!("listen = {:?} is not an address:port (e.g. \"127.0.0.1:6432\")", raw.listen))
        })?;

        let up = raw.upstream;
        let sources = [up.password.is_some(), up.password_env.is_some(), up.password_file.is_some()];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(invalid(
                "[upstream] gives more than one of password, password_env and password_file".to_string(),
            ));
        }
        let password = if let Some(p) = up.password {
            Some(Secret::new(p.into_bytes()))
        } else {
            let file = up.password_file.as_deref().map(resolve);
            password_from("[upstream]", file, up.password_env.as_deref(), &env).map_err(invalid)?
        };
        let ca_file = up.ca_file.as_deref().map(|p| match p.to_str() {
            Some("system") => RootCerts::System,
            _ => RootCerts::File(resolve(p)),
        });
        match (up.tls, &ca_file) {
            (UpstreamTls::VerifyCa | UpstreamTls::VerifyFull, None) => {
                return Err(invalid(format!(
                    "[upstream] tls = \"{}\" needs ca_file: a PEM file of the CA certificates that sign the \
                     server's, or \"system\" for the platform's store",
                    up.tls.name()
                )))
            }
            (mode, Some(RootCerts::System)) if mode != UpstreamTls::VerifyFull => {
                return Err(invalid(format!(
                    "[upstream] ca_file = \"system\" needs tls = \"verify-full\" (as libpq's sslrootcert=system), \
                     not \"{}\": a public CA signs certificates for anyone's names",
                    mode.name()
                )))
            }
            _ => {}
        }
        let connect_timeout = match &up.connect_timeout {
            Some(t) => parse_duration(t).map_err(|e| invalid(format!("[upstream] connect_timeout: {e}")))?,
            None => Duration::from_secs(10),
        };

        let limits = Limits {
            max_message_bytes: raw.limits.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
            max_connections: raw.limits.max_connections.unwrap_or(1000),
            login_timeout: match &raw.limits.login_timeout {
                Some(t) => parse_duration(t).map_err(|e| invalid(format!("[limits] login_timeout: {e}")))?,
                None => Duration::from_secs(30),
            },
            worker_threads: raw.limits.worker_threads.unwrap_or(0),
        };
        if limits.max_message_bytes < 1024 || limits.max_message_bytes > i32::MAX as usize {
            return Err(invalid(format!(
                "[limits] max_message_bytes = {} is outside 1024..=2147483647",
                limits.max_message_bytes
            )));
        }

        let jwks = match (raw.auth.jwks_file, raw.auth.jwks_url) {
            (Some(file), None) => crate::auth::Source::File(resolve(&file)),
            (None, Some(url)) => crate::auth::Source::Url(url),
            _ => return Err(invalid("[auth] needs exactly one of jwks_file and jwks_url".to_string())),
        };
        let defaults = crate::auth::Refresh::default();
        let refresh = crate::auth::Refresh {
            min_interval: match &raw.auth.jwks_min_refresh {
                Some(t) => parse_duration(t).map_err(|e| invalid(format!("[auth] jwks_min_refresh: {e}")))?,
                None => defaults.min_interval,
            },
            max_age: match &raw.auth.jwks_max_age {
                Some(t) => parse_duration(t).map_err(|e| invalid(format!("[auth] jwks_max_age: {e}")))?,
                None => defaults.max_age,
            },
        };

        let pseudonym_key = match (raw.masking.pseudonym_key_env, raw.masking.pseudonym_key_file) {
            (Some(_), Some(_)) => {
                return Err(invalid("[masking] gives both pseudonym_key_env and pseudonym_key_file".to_string()))
            }
            (Some(var), None) => match env(&var) {
                Some(v) => Some(Secret::new(v.into_bytes())),
                None => return Err(invalid(format!("[masking] pseudonym_key_env: the variable {var} is not set"))),
            },
            (None, Some(file)) => {
                let file = resolve(&file);
                Some(
                    read_pseudonym_key_file(&file)
                        .map_err(|e| invalid(format!("[masking] pseudonym_key_file {}: {e}", file.display())))?,
                )
            }
            (None, None) => None,
        };

        let catalog = CatalogSettings {
            refresh_interval: match &raw.catalog.refresh_interval {
                Some(t) => match parse_duration(t) {
                    Ok(d) if d >= Duration::from_millis(100) => d,
                    Ok(_) => return Err(invalid("[catalog] refresh_interval: at least 100ms".to_string())),
                    Err(e) => return Err(invalid(format!("[catalog] refresh_interval: {e}"))),
                },
                None => Duration::from_secs(1),
            },
        };

        let audit = match raw.audit {
            None => None,
            Some(a) => {
                let segment_bytes = a.segment_bytes.unwrap_or(portcullis_audit::writer::DEFAULT_SEGMENT_BYTES);
                if segment_bytes < 4096 {
                    return Err(invalid("[audit] segment_bytes: at least 4096".to_string()));
                }
                let origin = a.origin.unwrap_or_else(|| "portcullis".to_string());
                if origin.is_empty() || origin.contains(|c: char| c.is_whitespace() || c == '+') {
                    return Err(invalid(format!("[audit] origin {origin:?}: a name without spaces or '+'")));
                }
                Some(AuditSettings {
                    dir: resolve(&a.dir),
                    durability: a.durability,
                    segment_bytes,
                    keep: match &a.keep {
                        Some(k) => Some(parse_duration(k).map_err(|e| invalid(format!("[audit] keep: {e}")))?),
                        None => None,
                    },
                    signing_key_file: resolve(&a.signing_key_file),
                    origin,
                    checkpoint_interval: match &a.checkpoint_interval {
                        Some(t) => match parse_duration(t) {
                            Ok(d) if d >= Duration::from_millis(100) => d,
                            Ok(_) => return Err(invalid("[audit] checkpoint_interval: at least 100ms".to_string())),
                            Err(e) => return Err(invalid(format!("[audit] checkpoint_interval: {e}"))),
                        },
                        None => Duration::from_secs(10),
                    },
                    commit_delay: match &a.commit_delay {
                        Some(t) => match parse_duration(t) {
                            Ok(d) if d <= Duration::from_millis(100) => d,
                            Ok(_) => return Err(invalid("[audit] commit_delay: at most 100ms".to_string())),
                            Err(e) => return Err(invalid(format!("[audit] commit_delay: {e}"))),
                        },
                        None => Duration::from_millis(1),
                    },
                    record_parameters: a.record_parameters,
                    record_rows: a.record_rows,
                    replica: a.replica.unwrap_or_else(default_replica),
                })
            }
        };
        let admin = match raw.admin {
            None => None,
            Some(a) => {
                let listen: SocketAddr = a
                    .listen
                    .parse()
                    .map_err(|e| invalid(format!("[admin] listen {:?}: {e} (an address and port)", a.listen)))?;
                // The admin server speaks TLS whenever the gateway has a certificate.
                let scheme = if raw.tls.is_some() { "https" } else { "http" };
                let url = a.url.unwrap_or_else(|| format!("{scheme}://{listen}/"));
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(format!("[admin] url {url:?}: an http:// or https:// URL")));
                }
                if let Some(empty) = a.operators.iter().find(|g| g.trim().is_empty()) {
                    return Err(invalid(format!("[admin] operators: {empty:?} is not a group name")));
                }
                Some(AdminSettings { listen, url, operators: a.operators })
            }
        };
        let defaults = ApprovalSettings::default();
        let approvals = ApprovalSettings {
            timeout: match &raw.approvals.timeout {
                Some(t) => match parse_duration(t) {
                    Ok(d) if d >= Duration::from_secs(1) => d,
                    Ok(_) => return Err(invalid("[approvals] timeout: at least 1s".to_string())),
                    Err(e) => return Err(invalid(format!("[approvals] timeout: {e}"))),
                },
                None => defaults.timeout,
            },
            max_grant: match &raw.approvals.max_grant {
                Some(t) => match parse_duration(t) {
                    Ok(d) if !d.is_zero() => d,
                    Ok(_) => return Err(invalid("[approvals] max_grant: more than 0".to_string())),
                    Err(e) => return Err(invalid(format!("[approvals] max_grant: {e}"))),
                },
                None => defaults.max_grant,
            },
            webhook_url: match raw.approvals.webhook_url.clone() {
                None => None,
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    Some(Secret::new(url.into_bytes()))
                }
                Some(_) => return Err(invalid("[approvals] webhook_url: an http:// or https:// URL".to_string())),
            },
            store: match raw.approvals.store.as_deref() {
                None | Some("memory") => {
                    let a = &raw.approvals;
                    if a.database.is_some() || a.user.is_some() || a.password_file.is_some() || a.password_env.is_some()
                    {
                        return Err(invalid(
                            "[approvals] database, user and password: only with store = \"postgres\"".to_string(),
                        ));
                    }
                    StoreKind::Memory
                }
                Some("postgres") => {
                    let a = &raw.approvals;
                    let user =
                        match &a.user {
                            None => return Err(invalid(
                                "[approvals] store = \"postgres\" needs user: a role of its own for the log, which \
                                 client sessions (running as the upstream role) cannot reach"
                                    .to_string(),
                            )),
                            Some(u) if *u == up.user => {
                                return Err(invalid(format!(
                                "[approvals] user: {u:?} is the upstream role, which every client session runs as: \
                                 clients could read and write the approvals log; give the log a role of its own"
                            )))
                            }
                            Some(u) => u.clone(),
                        };
                    let file = a.password_file.as_deref().map(resolve);
                    let password =
                        password_from("[approvals]", file, a.password_env.as_deref(), &env).map_err(invalid)?;
                    StoreKind::Postgres {
                        database: a.database.clone().or_else(|| up.database.clone()).unwrap_or_else(|| up.user.clone()),
                        user,
                        password,
                    }
                }
                Some(other) => {
                    return Err(invalid(format!("[approvals] store: \"memory\" or \"postgres\", not {other:?}")))
                }
            },
            replica: raw
                .approvals
                .replica
                .clone()
                .or_else(|| audit.as_ref().map(|a| a.replica.clone()))
                .unwrap_or_else(default_replica),
        };
        if raw.mode == Mode::Observe && audit.is_none() {
            return Err(invalid(
                "mode = \"observe\" forwards what the policy refuses and records it: it needs an [audit] section"
                    .to_string(),
            ));
        }

        Ok(Config {
            path: path.to_path_buf(),
            listen,
            policy: resolve(&raw.policy),
            tls: raw.tls.map(|t| TlsFiles { cert: resolve(&t.cert), key: resolve(&t.key) }),
            auth: Auth { jwks, refresh, allow_cleartext_without_tls: raw.auth.allow_cleartext_without_tls },
            upstream: Upstream {
                host: up.host,
                port: up.port,
                user: up.user,
                password,
                database: up.database,
                tls: up.tls,
                ca_file,
                connect_timeout,
            },
            limits,
            pseudonym_key,
            catalog,
            mode: raw.mode,
            audit,
            admin,
            approvals,
        })
    }
}

impl Upstream {
    /// The upstream a libpq connection string names (`host=db port=5432
    /// user=app dbname=app sslmode=verify-full sslrootcert=ca.pem`; values
    /// may be single-quoted, with `\\'` and `\\\\` escapes), each key
    /// missing from it taken from libpq's environment variable (`PGHOST`,
    /// `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`, `PGSSLMODE`,
    /// `PGSSLROOTCERT`, read through `env`). Defaults: `localhost`, `5432`,
    /// `sslmode=prefer`, the database named as the user. URIs
    /// (`postgresql://...`) and other keys are refused, by name.
    ///
    /// ```
    /// use pg_proxy::config::{Upstream, UpstreamTls};
    /// let up = Upstream::from_conninfo("host=db.internal user=app dbname='my db' sslmode=disable", |_| None)?;
    /// assert_eq!((up.host.as_str(), up.port, up.database.as_deref()), ("db.internal", 5432, Some("my db")));
    /// assert_eq!(up.tls, UpstreamTls::Disable);
    /// # Ok::<(), String>(())
    /// ```
    pub fn from_conninfo(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Upstream, String> {
        if text.contains("://") {
            return Err("give the connection as key=value pairs (host=... user=... dbname=...), not a URI".into());
        }
        let mut given = std::collections::HashMap::new();
        let mut chars = text.chars().peekable();
        loop {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.peek().is_none() {
                break;
            }
            let mut key = String::new();
            while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
                key.push(c);
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.next() != Some('=') {
                return Err(format!("`{key}` has no value (expected {key}=value)"));
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            let mut value = String::new();
            if chars.next_if_eq(&'\'').is_some() {
                loop {
                    match chars.next() {
                        None => return Err(format!("the value of `{key}` has no closing quote")),
                        Some('\'') => break,
                        Some('\\') => {
                            value.push(chars.next().ok_or(format!("the value of `{key}` ends in a backslash"))?)
                        }
                        Some(c) => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    value.push(c);
                }
            }
            given.insert(key, value);
        }
        const KEYS: [(&str, &str); 7] = [
            ("host", "PGHOST"),
            ("port", "PGPORT"),
            ("user", "PGUSER"),
            ("dbname", "PGDATABASE"),
            ("password", "PGPASSWORD"),
            ("sslmode", "PGSSLMODE"),
            ("sslrootcert", "PGSSLROOTCERT"),
        ];
        if let Some(k) = given.keys().find(|k| !KEYS.iter().any(|(name, _)| name == k)) {
            return Err(format!(
                "unknown connection key `{k}` (known: host, port, user, dbname, password, sslmode, sslrootcert)"
            ));
        }
        let get = |key: &str| {
            let var = KEYS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v).unwrap_or_default();
            given.get(key).cloned().or_else(|| env(var)).filter(|v| !v.is_empty())
        };
        let user = get("user").ok_or("no user: give user=... (or set PGUSER)")?;
        let port = match get("port") {
            Some(p) => p.parse::<u16>().map_err(|_| format!("port `{p}` is not a port number"))?,
            None => 5432,
        };
        let tls = match get("sslmode").as_deref() {
            None | Some("prefer") => UpstreamTls::Prefer,
            Some("disable") => UpstreamTls::Disable,
            Some("allow") => UpstreamTls::Allow,
            Some("require") => UpstreamTls::Require,
            Some("verify-ca") => UpstreamTls::VerifyCa,
            Some("verify-full") => UpstreamTls::VerifyFull,
            Some(other) => return Err(format!("unknown sslmode `{other}`")),
        };
        let ca_file =
            get("sslrootcert").map(|p| if p == "system" { RootCerts::System } else { RootCerts::File(p.into()) });
        Ok(Upstream {
            host: get("host").unwrap_or_else(|| "localhost".to_string()),
            port,
            database: Some(get("dbname").unwrap_or_else(|| user.clone())),
            user,
            password: get("password").map(|p| Secret::new(p.into_bytes())),
            tls,
            ca_file,
            connect_timeout: Duration::from_secs(10),
        })
    }

    /// How the server's certificate is checked.
    pub fn verification(&self) -> Verification {
        self.tls.verification(self.ca_file.is_some())
    }

    /// What an operator should know about this upstream connection's
    /// security: said by `pg-proxy check` and logged when the gateway
    /// starts. Empty when the server is verified.
    ///
    /// ```
    /// # use std::path::Path;
    /// let text = "listen = \"127.0.0.1:6432\"\npolicy = \"p.toml\"\n[auth]\njwks_file = \"k.json\"\n\
    ///             [upstream]\nhost = \"db.internal\"\nuser = \"app\"\ntls = \"require\"\n";
    /// let config = pg_proxy::config::Config::from_toml_str(text, Path::new("gw.toml"), |_| None)?;
    /// assert!(config.upstream.warnings()[0].contains("not verified"));
    /// # Ok::<(), pg_proxy::config::ConfigError>(())
    /// ```
    pub fn warnings(&self) -> Vec<String> {
        let mode = self.tls.name();
        let mut out = Vec::new();
        match (self.tls, self.verification()) {
            (UpstreamTls::Disable, _) if !is_loopback(&self.host) => out.push(format!(
                "[upstream] tls = \"disable\" to {}, which is not this machine: statements, results and the \
                 password exchange cross the network in the clear",
                self.host
            )),
            (UpstreamTls::Disable, _) => {}
            (_, Verification::None) => out.push(format!(
                "[upstream] tls = \"{mode}\": the server's certificate is not verified, so anyone between the \
                 gateway and {} can pose as the database; use tls = \"verify-full\" with ca_file",
                self.host
            )),
            (_, Verification::Chain) => out.push(format!(
                "[upstream] tls = \"{mode}\": the certificate's chain is verified but not its host name, so any \
                 server holding a certificate from these CAs can pose as {}; use tls = \"verify-full\"",
                self.host
            )),
            (_, Verification::ChainAndName) => {}
        }
        if self.ca_file.is_some() && matches!(self.tls, UpstreamTls::Disable | UpstreamTls::Allow | UpstreamTls::Prefer)
        {
            out.push(format!(
                "[upstream] ca_file is not used with tls = \"{mode}\" (as in libpq): nothing is verified"
            ));
        }
        out
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) || host.starts_with('/')
}

/// Reads the key of `hash` masks from a file: its bytes as they are (a
/// final newline is part of the key). `pg-proxy policy
/// --pseudonym-key-file` reads it the same way, so its pseudonyms are the
/// gateway's.
pub fn read_pseudonym_key_file(path: &Path) -> std::io::Result<Secret> {
    std::fs::read(path).map(Secret::new)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A password for `section`: read from `file` (one trailing newline is
/// not part of it) or from the environment variable `var`; neither is
/// none, both an error.
fn password_from(
    section: &str,
    file: Option<PathBuf>,
    var: Option<&str>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, String> {
    match (file, var) {
        (Some(_), Some(_)) => Err(format!("{section} gives both password_file and password_env")),
        (Some(file), None) => {
            let bytes = std::fs::read(&file).map_err(|e| format!("{section} password_file {}: {e}", file.display()))?;
            let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
            Ok(Some(Secret::new(trimmed.to_vec())))
        }
        (None, Some(var)) => match env(var) {
            Some(v) => Ok(Some(Secret::new(v.into_bytes()))),
            None => Err(format!("{section} password_env: the variable {var} is not set")),
        },
        (None, None) => Ok(None),
    }
}

/// This machine's host name, or `gateway`.
fn default_replica() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".to_string())
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `90d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a duration (e.g. \"30s\", \"5m\", \"500ms\")"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m, h or d)")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listen = "127.0.0.1:6432"
policy = "policy.toml"
[auth]
jwks_file = "jwks.json"
[upstream]
user = "app"
password_env = "PW"
"#;

    fn env(name: &str) -> Option<String> {
        (name == "PW").then(|| "s3cret".to_string())
    }

    #[test]
    fn loads_and_resolves_relative_paths() {
        let c = Config::from_toml_str(MINIMAL, Path::new("/etc/portcullis/gw.toml"), env).unwrap();
        assert_eq!(c.policy, Path::new("/etc/portcullis/policy.toml"));
        assert_eq!(c.auth.jwks, crate::auth::Source::File("/etc/portcullis/jwks.json".into()));
        assert_eq!(c.upstream.password.as_ref().map(Secret::expose), Some(&b"s3cret"[..]));
        assert_eq!(c.upstream.port, 5432);
        assert!(!format!("{c:?}").contains("s3cret"), "the password never reaches Debug output");
    }

    #[test]
    fn errors_name_the_place() {
        let bad = MINIMAL.replace("user = \"app\"", "user = 5");
        let e = Config::from_toml_str(&bad, Path::new("gw.toml"), env).unwrap_err().to_string();
        assert!(e.starts_with("gw.toml:7:8:"), "{e}");
        let unknown = format!("{MINIMAL}\nbogus = 1\n");
        let e = Config::from_toml_str(&unknown, Path::new("gw.toml"), env).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::from_toml_str(MINIMAL, Path::new("gw.toml"), |_| None).unwrap_err().to_string();
        assert!(e.contains("PW is not set"), "{e}");
        let both = MINIMAL.replace("password_env = \"PW\"", "password_env = \"PW\"\npassword = \"x\"");
        assert!(Config::from_toml_str(&both, Path::new("gw.toml"), env).is_err());
    }

    fn upstream(lines: &str) -> Result<Upstream, String> {
        let text = MINIMAL.replace("password_env = \"PW\"", lines);
        Config::from_toml_str(&text, Path::new("/etc/gw/gw.toml"), env).map(|c| c.upstream).map_err(|e| e.to_string())
    }

    #[test]
    fn upstream_tls_modes_are_libpqs() {
        let modes = [
            ("disable", UpstreamTls::Disable),
            ("allow", UpstreamTls::Allow),
            ("prefer", UpstreamTls::Prefer),
            ("require", UpstreamTls::Require),
            ("verify-ca", UpstreamTls::VerifyCa),
            ("verify-full", UpstreamTls::VerifyFull),
        ];
        for (name, mode) in modes {
            let u = upstream(&format!("tls = {name:?}\nca_file = \"ca.pem\"")).unwrap();
            assert_eq!((u.tls, u.tls.name()), (mode, name));
            assert_eq!(u.ca_file, Some(RootCerts::File("/etc/gw/ca.pem".into())));
        }
        assert_eq!(upstream("").unwrap().tls, UpstreamTls::Prefer, "the default, as libpq's");
        assert!(upstream("tls = \"verify_full\"").unwrap_err().contains("verify-full"));

        // What each mode checks.
        let v = |lines: &str| upstream(lines).unwrap().verification();
        assert_eq!(v("tls = \"prefer\"\nca_file = \"ca.pem\""), Verification::None);
        assert_eq!(v("tls = \"require\""), Verification::None);
        assert_eq!(v("tls = \"require\"\nca_file = \"ca.pem\""), Verification::Chain);
        assert_eq!(v("tls = \"verify-ca\"\nca_file = \"ca.pem\""), Verification::Chain);
        assert_eq!(v("tls = \"verify-full\"\nca_file = \"ca.pem\""), Verification::ChainAndName);
        assert_eq!(v("tls = \"verify-full\"\nca_file = \"system\""), Verification::ChainAndName);
    }

    #[test]
    fn upstream_tls_that_cannot_verify_is_refused() {
        for mode in ["verify-ca", "verify-full"] {
            let e = upstream(&format!("tls = {mode:?}")).unwrap_err();
            assert!(e.contains(&format!("tls = \"{mode}\" needs ca_file")), "{e}");
        }
        for mode in ["prefer", "require", "verify-ca"] {
            let e = upstream(&format!("tls = {mode:?}\nca_file = \"system\"")).unwrap_err();
            assert!(e.contains("ca_file = \"system\" needs tls = \"verify-full\""), "{e}");
        }
    }

    #[test]
    fn upstream_tls_warnings() {
        let w = |lines: &str| upstream(lines).unwrap().warnings();
        assert_eq!(w("tls = \"verify-full\"\nca_file = \"ca.pem\""), Vec::<String>::new());
        assert_eq!(w("tls = \"disable\""), Vec::<String>::new(), "loopback, in the clear: nothing crosses a network");
        assert!(w("host = \"db.internal\"\ntls = \"disable\"")[0].contains("in the clear"));
        for mode in ["allow", "prefer", "require"] {
            let warnings = w(&format!("tls = {mode:?}"));
            assert!(warnings[0].contains(&format!("tls = \"{mode}\": the server's certificate is not verified")));
        }
        assert!(w("tls = \"verify-ca\"\nca_file = \"ca.pem\"")[0].contains("not its host name"));
        let ignored = w("tls = \"prefer\"\nca_file = \"ca.pem\"");
        assert!(ignored[1].contains("ca_file is not used"), "{ignored:?}");
    }

    /// The keys a table accepts, as serde lists them when it meets an
    /// unknown one.
    fn accepted_keys(table: &str) -> Vec<String> {
        let text = match table {
            "" => format!("zz_unknown = 1\n{MINIMAL}"),
            "auth" | "upstream" => MINIMAL.replace(&format!("[{table}]\n"), &format!("[{table}]\nzz_unknown = 1\n")),
            other => format!("{MINIMAL}\n[{other}]\nzz_unknown = 1\n"),
        };
        let e = Config::from_toml_str(&text, Path::new("gw.toml"), env).unwrap_err().to_string();
        assert!(e.contains("unknown field `zz_unknown`"), "[{table}]: {e}");
        let expected = e.split_once("expected").map(|(_, rest)| rest).unwrap_or_default();
        let tables = ["tls", "auth", "upstream", "limits", "masking", "catalog", "audit", "admin", "approvals"];
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|k| !table.is_empty() || !tables.contains(k))
            .map(str::to_string)
            .collect()
    }

    /// The keys `docs/configuration.md` documents, by table: the rows of
    /// its `| key | default | meaning |` tables.
    fn documented_keys() -> std::collections::BTreeMap<String, Vec<String>> {
        let doc = include_str!("../../../docs/configuration.md");
        let mut out = std::collections::BTreeMap::<String, Vec<String>>::new();
        let (mut table, mut in_keys) = (None::<String>, false);
        for line in doc.lines() {
            if let Some(heading) = line.strip_prefix("## ") {
                table = if heading == "Top level" {
                    Some(String::new())
                } else {
                    heading.strip_prefix("`[").and_then(|h| h.split_once("]`")).map(|(name, _)| name.to_string())
                };
                in_keys = false;
            } else if line.starts_with("| key | default | meaning |") {
                in_keys = true;
            } else if !line.starts_with('|') {
                in_keys = false;
            } else if in_keys && line.starts_with("| `") {
                let key = line.trim_start_matches("| `").split('`').next().unwrap_or_default().to_string();
                out.entry(table.clone().unwrap_or_default()).or_default().push(key);
            }
        }
        out
    }

    #[test]
    fn the_configuration_reference_lists_every_key() {
        let documented = documented_keys();
        for table in ["", "tls", "auth", "upstream", "limits", "masking", "catalog", "audit", "admin", "approvals"] {
            let mut accepted = accepted_keys(table);
            let mut listed = documented.get(table).cloned().unwrap_or_default();
            accepted.sort();
            listed.sort();
            assert_eq!(listed, accepted, "docs/configuration.md, table [{table}]: documented vs accepted keys");
        }
        assert_eq!(documented.len(), 10, "{documented:?}");
    }

    #[test]
    fn the_admin_server_and_approvals_are_read_and_checked() {
        let load = |extra: &str| Config::from_toml_str(&format!("{MINIMAL}\n{extra}"), Path::new("gw.toml"), env);
        let c = load("").unwrap();
        let defaults = ApprovalSettings { replica: c.approvals.replica.clone(), ..ApprovalSettings::default() };
        assert_eq!((c.admin.clone(), c.approvals.clone()), (None, defaults));
        assert_eq!(c.approvals.store, StoreKind::Memory);
        assert_eq!(c.approvals.timeout, Duration::from_secs(900));
        let c =
            load("[admin]\nlisten = \"127.0.0.1:9187\"\n[approvals]\ntimeout = \"2m\"\nmax_grant = \"1h\"").unwrap();
        let admin = c.admin.unwrap();
        assert_eq!((admin.listen.port(), admin.url.as_str()), (9187, "http://127.0.0.1:9187/"));
        assert_eq!((c.approvals.timeout, c.approvals.max_grant), (Duration::from_secs(120), Duration::from_secs(3600)));
        let c = load("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[admin]\nlisten = \"127.0.0.1:9187\"").unwrap();
        assert_eq!(c.admin.unwrap().url, "https://127.0.0.1:9187/", "TLS with the gateway's certificate");
        let c = load("[admin]\nlisten = \"127.0.0.1:9187\"\nurl = \"https://approve.example.com/\"").unwrap();
        assert_eq!(c.admin.unwrap().url, "https://approve.example.com/");
        let c = load("[approvals]\nwebhook_url = \"https://hooks.example.com/T0/B0/s3cret\"").unwrap();
        assert_eq!(
            c.approvals.webhook_url.as_ref().map(Secret::expose),
            Some(&b"https://hooks.example.com/T0/B0/s3cret"[..])
        );
        assert!(!format!("{c:?}").contains("s3cret"), "the webhook URL is a secret");
        let c = load("[approvals]\nstore = \"postgres\"\nuser = \"log\"\nreplica = \"gw-2\"").unwrap();
        let upstream_db = c.upstream.database.clone().unwrap_or_else(|| c.upstream.user.clone());
        let log = |database: String| StoreKind::Postgres { database, user: "log".into(), password: None };
        assert_eq!(c.approvals.store, log(upstream_db));
        assert_eq!(c.approvals.replica, "gw-2");
        let c = load("[approvals]\nstore = \"postgres\"\nuser = \"log\"\ndatabase = \"ops\"").unwrap();
        assert_eq!(c.approvals.store, log("ops".into()));
        let same_role = format!("[approvals]\nstore = \"postgres\"\nuser = \"{}\"", c.upstream.user);
        for (extra, says) in [
            ("[approvals]\nstore = \"redis\"", "[approvals] store"),
            ("[approvals]\ndatabase = \"ops\"", "[approvals] database, user and password: only with store"),
            ("[approvals]\nstore = \"postgres\"", "needs user: a role of its own"),
            (same_role.as_str(), "is the upstream role"),
            (
                "[approvals]\nstore = \"postgres\"\nuser = \"log\"\npassword_file = \"p\"\npassword_env = \"P\"",
                "[approvals] gives both password_file and password_env",
            ),
            (
                "[approvals]\nstore = \"postgres\"\nuser = \"log\"\npassword_file = \"no-such-file\"",
                "[approvals] password_file",
            ),
            (
                "[approvals]\nstore = \"postgres\"\nuser = \"log\"\npassword_env = \"PORTCULLIS_NO_SUCH_VAR_9\"",
                "not set",
            ),
            ("[admin]\nlisten = \"somewhere\"", "[admin] listen"),
            ("[admin]\nlisten = \"127.0.0.1:1\"\nurl = \"ftp://x\"", "[admin] url"),
            ("[approvals]\ntimeout = \"10ms\"", "[approvals] timeout: at least 1s"),
            ("[approvals]\nmax_grant = \"0s\"", "[approvals] max_grant"),
            ("[approvals]\ntimeout = \"soon\"", "[approvals] timeout"),
            ("[approvals]\nwebhook_url = \"file:///tmp/x\"", "[approvals] webhook_url"),
        ] {
            let e = load(extra).unwrap_err().to_string();
            assert!(e.contains(says), "{extra}: {e}");
        }
    }

    #[test]
    fn the_catalog_refresh_interval_is_checked() {
        let load = |extra: &str| Config::from_toml_str(&format!("{MINIMAL}\n{extra}"), Path::new("gw.toml"), env);
        assert_eq!(load("").unwrap().catalog.refresh_interval, Duration::from_secs(1));
        let c = load("[catalog]\nrefresh_interval = \"250ms\"").unwrap();
        assert_eq!(c.catalog.refresh_interval, Duration::from_millis(250));
        let e = load("[catalog]\nrefresh_interval = \"10ms\"").unwrap_err().to_string();
        assert!(e.contains("[catalog] refresh_interval: at least 100ms"), "{e}");
        assert!(load("[catalog]\nrefresh_interval = \"soon\"").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86_400)));
        assert!(parse_duration("5w").is_err());
    }
}
