//! The database side: connecting with the credential the gateway holds.
//!
//! [`connect`] opens a connection (TCP, then TLS as the configuration
//! says), sends the startup message, answers the server's authentication
//! request (SCRAM-SHA-256 through `postgres-protocol`, MD5, cleartext or
//! none for `trust`), and reads the server's parameters and cancel key up
//! to its first `ReadyForQuery`.
//!
//! The password is used for the exchange and nowhere else: errors say
//! which step failed and what the server answered (its SQLSTATE and
//! message, which PostgreSQL keeps free of the password), never the
//! credential.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec::{self, Authentication, BackendFrame};
use crate::config::{self, UpstreamTls};
use crate::tls::Stream;

/// Why the upstream connection failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connection or I/O failed.
    #[error("connecting to {addr}: {source}")]
    Io {
        /// The server's address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The connection attempt took too long.
    #[error("connecting to {0}: timed out")]
    Timeout(String),
    /// TLS could not be set up.
    #[error("TLS to the database: {0}")]
    Tls(String),
    /// The server refused the login or the startup.
    #[error("the database refused the connection: {code}: {message}")]
    Refused {
        /// SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
    },
    /// A query of the gateway's own (the catalog's) failed on the server.
    #[error("the database answered with an error: {code}: {message}")]
    Failed {
        /// SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server asked for something the gateway does not do.
    #[error("the database asks for {0}, which the gateway does not support")]
    Unsupported(String),
    /// The server sent something unexpected.
    #[error("protocol error from the database: {0}")]
    Protocol(String),
}

/// A logged-in upstream connection, ready for queries.
#[derive(Debug)]
pub struct Connection {
    /// The stream.
    pub stream: Stream,
    /// Bytes read past the first `ReadyForQuery`.
    pub buf: BytesMut,
    /// The backend's process id.
    pub pid: i32,
    /// The backend's cancel key.
    pub secret: Vec<u8>,
    /// `ParameterStatus` values, in the order the server sent them.
    pub params: Vec<(String, String)>,
    /// Where the server is (for cancel requests).
    pub addr: SocketAddr,
}

/// What to connect with.
#[derive(Debug, Clone)]
pub struct Target {
    /// The upstream configuration.
    pub config: config::Upstream,
    /// TLS client configuration (`None` when TLS is disabled).
    pub tls: Option<Arc<ClientConfig>>,
    /// Largest backend message accepted.
    pub max_message_bytes: usize,
}

impl Target {
    /// Builds the target from the configuration.
    pub fn new(config: &config::Upstream, max_message_bytes: usize) -> Result<Target, String> {
        let tls = match config.tls {
            UpstreamTls::Disable => None,
            _ => Some(crate::tls::client_config(config.verification(), config.ca_file.as_ref()).map_err(|e| {
                match &config.ca_file {
                    Some(config::RootCerts::File(_)) => format!("[upstream] ca_file {e}"),
                    Some(config::RootCerts::System) => format!("[upstream] ca_file = {e}"),
                    None => format!("[upstream] tls: {e}"),
                }
            })?),
        };
        Ok(Target { config: config.clone(), tls, max_message_bytes })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.config.host, self.config.port)
    }

    /// Opens TCP (and TLS when configured and `tls`) to the server.
    async fn open(&self, tls: bool) -> Result<(Stream, SocketAddr), UpstreamError> {
        let addr = self.addr();
        let io = |source| UpstreamError::Io { addr: addr.clone(), source };
        let tcp = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| UpstreamError::Timeout(addr.clone()))?
            .map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let peer = tcp.peer_addr().map_err(io)?;
        let Some(tls) = self.tls.as_ref().filter(|_| tls) else { return Ok((Stream::Plain(tcp), peer)) };
        let mut tcp = tcp;
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        tcp.write_all(&request).await.map_err(io)?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(io)?;
        match answer {
            [b'S'] => {
                let name = ServerName::try_from(self.config.host.clone())
                    .map_err(|e| UpstreamError::Tls(format!("server name {:?}: {e}", self.config.host)))?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| UpstreamError::Tls(e.to_string()))?;
                Ok((Stream::Client(Box::new(stream)), peer))
            }
            [b'N'] if matches!(self.config.tls, UpstreamTls::Prefer | UpstreamTls::Allow) => {
                Ok((Stream::Plain(tcp), peer))
            }
            [b'N'] => Err(UpstreamError::Tls("the server does not offer TLS and the configuration requires it".into())),
            _ => Err(UpstreamError::Protocol("unexpected answer to SSLRequest".into())),
        }
    }
}

/// Connects and logs in to `database`, with the startup parameters
/// `params` (besides `user` and `database`).
pub async fn connect(target: &Target, database: &str, params: &[(&str, &str)]) -> Result<Connection, UpstreamError> {
    if target.config.tls == UpstreamTls::Allow {
        // libpq's `allow`: in the clear first, and over TLS when the server
        // refuses that login (a `hostssl`-only pg_hba.conf).
        match login(target, false, database, params).await {
            Err(UpstreamError::Refused { .. }) => {}
            other => return other,
        }
    }
    login(target, true, database, params).await
}

async fn login(
    target: &Target,
    tls: bool,
    database: &str,
    params: &[(&str, &str)],
) -> Result<Connection, UpstreamError> {
    let (mut stream, addr) = target.open(tls).await?;
    let io = |source| UpstreamError::Io { addr: target.addr(), source };
    let cfg = &target.config;
    let mut out = BytesMut::new();
    let mut startup: Vec<(&str, &str)> = vec![("user", cfg.user.as_str()), ("database", database)];
    startup.extend(params.iter().copied());
    frontend::startup_message(startup.iter().copied(), &mut out).map_err(io)?;
    stream.write_all(&out).await.map_err(io)?;

    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramSha256> = None;
    let mut pid = 0;
    let mut secret = Vec::new();
    let mut server_params = Vec::new();
    loop {
        let frame = read_frame(&mut stream, &mut buf, target).await?;
        match frame.kind {
            b'R' => {
                out.clear();
                let password = || {
                    cfg.password
                        .as_ref()
                        .map(|p| p.expose())
                        .ok_or_else(|| UpstreamError::Unsupported("a password, and none is configured".to_string()))
                };
                match codec::parse_authentication(&frame).map_err(|e| UpstreamError::Protocol(e.to_string()))? {
                    Authentication::Ok => continue,
                    Authentication::CleartextPassword => {
                        if !stream.is_tls() && !addr.ip().is_loopback() {
                            return Err(UpstreamError::Unsupported(
                                "the password in cleartext over an unencrypted connection".to_string(),
                            ));
                        }
                        frontend::password_message(password()?, &mut out).map_err(io)?;
                    }
                    Authentication::Md5Password { salt } => {
                        let hash = postgres_protocol::authentication::md5_hash(cfg.user.as_bytes(), password()?, salt);
                        frontend::password_message(hash.as_bytes(), &mut out).map_err(io)?;
                    }
                    Authentication::Sasl { mechanisms } => {
                        if !mechanisms.iter().any(|m| m.as_str() == SCRAM_SHA_256) {
                            let offered: Vec<&str> = mechanisms.iter().map(|m| m.as_str()).collect();
                            return Err(UpstreamError::Unsupported(format!("SASL mechanisms {offered:?}")));
                        }
                        let s = ScramSha256::new(password()?, ChannelBinding::unsupported());
                        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out).map_err(io)?;
                        scram = Some(s);
                    }
                    Authentication::SaslContinue(data) => {
                        let s = scram.as_mut().ok_or_else(|| UpstreamError::Protocol("SASL out of order".into()))?;
                        s.update(&data).map_err(|e| UpstreamError::Protocol(format!("SCRAM: {e}")))?;
                        frontend::sasl_response(s.message(), &mut out).map_err(io)?;
                    }
                    Authentication::SaslFinal(data) => {
                        let mut s = scram.take().ok_or_else(|| UpstreamError::Protocol("SASL out of order".into()))?;
                        s.finish(&data).map_err(|e| UpstreamError::Protocol(format!("SCRAM server proof: {e}")))?;
                        continue;
                    }
                    Authentication::Other(code) => {
                        return Err(UpstreamError::Unsupported(format!("authentication method {code}")));
                    }
                }
                stream.write_all(&out).await.map_err(io)?;
            }
            b'S' => {
                let (name, value) =
                    codec::parse_parameter_status(&frame).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                server_params.push((name.as_str().to_string(), value.as_str().to_string()));
            }
            b'K' => {
                let (p, s) =
                    codec::parse_backend_key_data(&frame).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                pid = p;
                secret = s.to_vec();
            }
            b'E' => return Err(refused(&frame)),
            // Notices during startup are not the client's business.
            b'N' => {}
            b'v' => {}
            b'Z' => {
                return Ok(Connection { stream, buf, pid, secret, params: server_params, addr });
            }
            other => {
                return Err(UpstreamError::Protocol(format!("unexpected message '{}' during startup", other as char)));
            }
        }
    }
}

fn refused(frame: &BackendFrame) -> UpstreamError {
    match codec::parse_fields(frame) {
        Ok(fields) => {
            let get = |c: u8| fields.iter().find(|(k, _)| *k == c).map(|(_, v)| v.as_str().to_string());
            UpstreamError::Refused { code: get(b'C').unwrap_or_default(), message: get(b'M').unwrap_or_default() }
        }
        Err(e) => UpstreamError::Protocol(e.to_string()),
    }
}

async fn read_frame(stream: &mut Stream, buf: &mut BytesMut, target: &Target) -> Result<BackendFrame, UpstreamError> {
    loop {
        if let Some(frame) =
            codec::decode_backend(buf, target.max_message_bytes).map_err(|e| UpstreamError::Protocol(e.to_string()))?
        {
            return Ok(frame);
        }
        let n = stream.read_buf(buf).await.map_err(|source| UpstreamError::Io { addr: target.addr(), source })?;
        if n == 0 {
            return Err(UpstreamError::Protocol("the server closed the connection".into()));
        }
    }
}

/// Asks the server to cancel what backend `pid` is running.
pub async fn cancel(target: &Target, addr: SocketAddr, pid: i32, secret: &[u8]) -> Result<(), UpstreamError> {
    let io = |source| UpstreamError::Io { addr: addr.to_string(), source };
    let key: [u8; 4] =
        secret.try_into().map_err(|_| UpstreamError::Protocol(format!("a cancel key of {} bytes", secret.len())))?;
    let mut out = BytesMut::new();
    frontend::cancel_request(pid, i32::from_be_bytes(key), &mut out);
    // `allow` sends it in the clear, as it logs in first.
    let (mut stream, _) = target.open(target.config.tls != UpstreamTls::Allow).await?;
    stream.write_all(&out).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    // The server closes the connection once it has read the request.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut sink)).await;
    Ok(())
}

impl Connection {
    /// Runs a query of the gateway's own (catalog lookups) and returns its
    /// rows as text. Only for an idle connection no client uses.
    pub async fn simple_query(
        &mut self,
        sql: &str,
        max_message_bytes: usize,
    ) -> Result<Vec<Vec<Option<String>>>, UpstreamError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|source| self.io(source))?;
        self.round_trip(&out, max_message_bytes).await
    }

    /// Runs `sql` by the extended protocol, with `parameters` as text for
    /// its `$1`..., and returns its rows as text: the server takes one
    /// statement only, so a text that is not one statement fails whole
    /// and nothing of it runs. With `prepare_as`, the statement is only
    /// prepared under that name (each `$n` of an undeclared type), for an
    /// `EXECUTE` to use. Only for an idle connection no client uses.
    pub async fn extended_query(
        &mut self,
        sql: &str,
        parameters: &[&str],
        prepare_as: Option<&str>,
        max_message_bytes: usize,
    ) -> Result<Vec<Vec<Option<String>>>, UpstreamError> {
        let mut out = BytesMut::new();
        let written = (|| {
            frontend::parse(prepare_as.unwrap_or(""), sql, std::iter::empty(), &mut out)?;
            if prepare_as.is_none() {
                frontend::bind(
                    "",
                    "",
                    std::iter::empty(),
                    parameters.iter(),
                    |value: &&str, buf: &mut BytesMut| {
                        buf.extend_from_slice(value.as_bytes());
                        Ok(postgres_protocol::IsNull::No)
                    },
                    std::iter::empty(),
                    &mut out,
                )
                .map_err(|_| std::io::Error::other("Bind could not be written"))?;
                frontend::execute("", 0, &mut out)?;
            }
            frontend::sync(&mut out);
            Ok::<(), std::io::Error>(())
        })();
        written.map_err(|source| self.io(source))?;
        self.round_trip(&out, max_message_bytes).await
    }

    /// Waits up to `timeout` for a `NotificationResponse` (after a
    /// `LISTEN`): whether one came. Other messages are passed over.
    pub async fn notification(
        &mut self,
        timeout: std::time::Duration,
        max_message_bytes: usize,
    ) -> Result<bool, UpstreamError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(frame) = codec::decode_backend(&mut self.buf, max_message_bytes)
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?
            {
                if frame.kind == b'A' {
                    return Ok(true);
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Ok(false),
                Ok(Ok(0)) => return Err(UpstreamError::Protocol("the server closed the connection".into())),
                Ok(Ok(_)) => {}
                Ok(Err(source)) => return Err(self.io(source)),
            }
        }
    }

    fn io(&self, source: std::io::Error) -> UpstreamError {
        UpstreamError::Io { addr: self.addr.to_string(), source }
    }

    /// Sends `out` and reads the answer up to `ReadyForQuery`: the rows as
    /// text, or the server's error.
    async fn round_trip(
        &mut self,
        out: &[u8],
        max_message_bytes: usize,
    ) -> Result<Vec<Vec<Option<String>>>, UpstreamError> {
        self.stream.write_all(out).await.map_err(|source| self.io(source))?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            let frame = loop {
                if let Some(f) = codec::decode_backend(&mut self.buf, max_message_bytes)
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?
                {
                    break f;
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) => return Err(UpstreamError::Protocol("the server closed the connection".into())),
                    Ok(_) => {}
                    Err(source) => return Err(self.io(source)),
                }
            };
            match frame.kind {
                b'D' => {
                    let values = codec::data_row_values(&frame).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                    rows.push(
                        values.into_iter().map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned())).collect(),
                    );
                }
                b'E' => {
                    failure = Some(match refused(&frame) {
                        UpstreamError::Refused { code, message } => UpstreamError::Failed { code, message },
                        other => other,
                    })
                }
                b'Z' => return failure.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }
}
