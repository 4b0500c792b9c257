//! What the commands that call a running gateway's admin API share
//! (`pg-proxy approvals`, `pg-proxy sessions`): where the admin server
//! is, the caller's token, the call itself, and showing its answers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use serde_json::Value;

use super::say_line;

/// The environment variable the token is read from without `--token-file`.
const TOKEN_ENV: &str = "PORTCULLIS_TOKEN";

/// Where the admin server is and who calls it.
#[derive(Args)]
pub(crate) struct AdminConnection {
    /// The gateway's admin address (`[admin] url`).
    #[arg(long, global = true, value_name = "URL", env = "PORTCULLIS_ADMIN", default_value = "http://127.0.0.1:9187")]
    admin: String,
    /// A file holding your token (else PORTCULLIS_TOKEN). Approvals are
    /// given by the person the token names.
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The CA certificates (PEM) that sign the admin server's certificate,
    /// when an https:// address is not signed by a CA this machine trusts
    /// (the gateway's own `[tls] cert`, say).
    #[arg(long, global = true, value_name = "FILE", env = "PORTCULLIS_ADMIN_CA")]
    ca_file: Option<PathBuf>,
    /// Print the API's JSON instead of tables and sentences.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// Why a call did not give an answer.
pub(crate) enum Failure {
    /// The API answered with an error (exit 1).
    Refused(String),
    /// Usage (exit 2).
    Usage(String),
    /// Not reached, or not the API (exit 3).
    Unreachable(String),
}

impl Failure {
    pub(crate) fn exit(self) -> ExitCode {
        let (code, message) = match self {
            Failure::Refused(m) => (1, m),
            Failure::Usage(m) => (2, m),
            Failure::Unreachable(m) => (3, m),
        };
        eprintln!("error: {message}");
        ExitCode::from(code)
    }
}

fn token(args: &AdminConnection) -> Result<String, Failure> {
    let token = match &args.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("--token-file {}: {e}", path.display())))?,
        None => std::env::var(TOKEN_ENV).map_err(|_| {
            Failure::Usage(format!("no token: give --token-file FILE or set {TOKEN_ENV} to your token"))
        })?,
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(Failure::Usage("the token is empty".into()));
    }
    Ok(token)
}

/// TLS that trusts the CA certificates of the PEM file `path` (and no
/// others).
fn tls_trusting(path: &std::path::Path) -> Result<ureq::tls::TlsConfig, Failure> {
    use ureq::tls::{PemItem, RootCerts, TlsConfig};
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| Failure::Usage(format!("--ca-file {shown}: {e}")))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => return Err(Failure::Usage(format!("--ca-file {shown}: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(Failure::Usage(format!("--ca-file {shown}: no PEM certificate in the file")));
    }
    Ok(TlsConfig::builder().root_certs(RootCerts::new_with_certs(&certs)).build())
}

/// One API call: the answer's JSON, or why there is none.
pub(crate) fn call(args: &AdminConnection, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
    let token = token(args)?;
    let base = args.admin.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Failure::Usage(format!("--admin {}: an http:// or https:// URL", args.admin)));
    }
    let url = format!("{base}/api/v1{path}");
    let mut config =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(30)));
    if let Some(path) = &args.ca_file {
        config = config.tls_config(tls_trusting(path)?);
    }
    let agent: ureq::Agent = config.build().into();
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(&url)
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .body(body.map(|b| b.to_string()).unwrap_or_default())
        .map_err(|e| Failure::Usage(format!("{url}: {e}")))?;
    let mut response = agent.run(request).map_err(|e| Failure::Unreachable(format!("{url}: {e}")))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().map_err(|e| Failure::Unreachable(format!("{url}: {e}")))?;
    if status == 204 {
        return Ok(Value::Null);
    }
    let value: Value = serde_json::from_str(&text).map_err(|_| {
        Failure::Unreachable(format!("{url} answered {status} with something that is not the admin API"))
    })?;
    if (200..300).contains(&status) {
        return Ok(value);
    }
    match value.pointer("/error/message").and_then(Value::as_str) {
        Some(m) if status == 401 => Err(Failure::Usage(format!("the gateway did not accept your token: {m}"))),
        Some(m) => Err(Failure::Refused(m.to_string())),
        None => Err(Failure::Unreachable(format!("{url} answered {status}"))),
    }
}

/// `value` with every control character of its strings (but newline and
/// tab), and the marks that reorder text on screen, written as `\u{..}`
/// escapes.
pub(crate) fn visible(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(visible_text(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(visible).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (visible_text(&k), visible(v))).collect()),
        other => other,
    }
}

fn visible_text(text: &str) -> String {
    let hidden = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hidden) {
        return text.to_string();
    }
    text.chars().map(|c| if hidden(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// "in 14m", "3m ago": a time of the API's relative to now.
pub(crate) fn relative(text: &str) -> String {
    let Some(t) = portcullis_audit::time::parse_utc(text) else { return text.to_string() };
    let now = SystemTime::now();
    match t.duration_since(now) {
        Ok(ahead) => format!("in {}", short(ahead)),
        Err(e) => format!("{} ago", short(e.duration())),
    }
}

pub(crate) fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

pub(crate) fn table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) {
    let mut widths = headers.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string()
    };
    say!("{}", line(headers.to_vec()));
    for row in rows {
        say!("{}", line(row.iter().map(String::as_str).collect()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use super::*;
    use serde_json::json;

    #[test]
    fn what_others_wrote_cannot_steer_the_terminal() {
        let answer = json!({"sql": "DELETE FROM t\n\tWHERE note = '\u{1b}[2J\u{7}\r\u{9b}31m \u{202e}gnp.exe'"});
        assert_eq!(
            visible(answer)["sql"],
            "DELETE FROM t\n\tWHERE note = '\\u{1b}[2J\\u{7}\\u{d}\\u{9b}31m \\u{202e}gnp.exe'"
        );
    }
}
