//! `pg-proxy approvals`: the approvals API of a running gateway, from a
//! terminal or a script.
//!
//! Exit codes: `0` success; `1` the gateway refused (not an approver, your
//! own request, decided already, no such request...: its message is
//! printed); `2` bad usage, or no token; `3` the admin server could not be
//! reached or answered something that is not the API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use super::say_line;
use serde_json::{json, Value};

/// The environment variable the token is read from without `--token-file`.
const TOKEN_ENV: &str = "PORTCULLIS_TOKEN";

#[derive(Args)]
pub(crate) struct ApprovalsArgs {
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
    json: bool,
    #[command(subcommand)]
    command: ApprovalsCommand,
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// List requests you may decide or that your agents made.
    List {
        /// Pending ones (the default) or decided ones.
        #[arg(long, value_parser = ["pending", "decided"], default_value = "pending")]
        state: String,
    },
    /// Show one request: the statement and its parameters, who asked,
    /// the rule, the votes.
    Show {
        /// The request's id (from the client's notice, or `list`).
        id: String,
    },
    /// Approve a request: the held statement runs (once enough people
    /// approved).
    Approve {
        /// The request's id.
        id: String,
        /// Why, for the record.
        #[arg(long, default_value = "")]
        reason: String,
        /// Also let statements of the same shape from the same person and
        /// agent run without asking, for this long (e.g. 30m; capped by
        /// `[approvals] max_grant`).
        #[arg(long, visible_alias = "for", value_name = "DURATION")]
        grant_for: Option<String>,
    },
    /// Deny a request: the client gets 42501 with your name and reason.
    Deny {
        /// The request's id.
        id: String,
        /// Why (required: the requester is told).
        #[arg(long)]
        reason: String,
    },
    /// Give the reason for a request you (or your agent) made, for its
    /// approvers to see: with your own token, not your agent's.
    Justify {
        /// The request's id (from the client's notice).
        id: String,
        /// Why the statement should run.
        #[arg(long)]
        reason: String,
    },
    /// List live grants.
    Grants,
    /// Revoke a grant.
    Revoke {
        /// The grant's id.
        id: String,
    },
}

/// Why a call did not give an answer.
enum Failure {
    /// The API answered with an error (exit 1).
    Refused(String),
    /// Usage (exit 2).
    Usage(String),
    /// Not reached, or not the API (exit 3).
    Unreachable(String),
}

impl Failure {
    fn exit(self) -> ExitCode {
        let (code, message) = match self {
            Failure::Refused(m) => (1, m),
            Failure::Usage(m) => (2, m),
            Failure::Unreachable(m) => (3, m),
        };
        eprintln!("error: {message}");
        ExitCode::from(code)
    }
}

pub(crate) fn run(args: ApprovalsArgs) -> ExitCode {
    match call_and_print(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

fn token(args: &ApprovalsArgs) -> Result<String, Failure> {
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
fn call(args: &ApprovalsArgs, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
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
        Failure::Unreachable(format!("{url} answered {status} with something that is not the approvals API"))
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

fn call_and_print(args: &ApprovalsArgs) -> Result<(), Failure> {
    let answer = match &args.command {
        ApprovalsCommand::List { state } => call(args, "GET", &format!("/approvals?state={state}"), None)?,
        ApprovalsCommand::Show { id } => call(args, "GET", &format!("/approvals/{}", segment(id)?), None)?,
        ApprovalsCommand::Approve { id, reason, grant_for } => {
            let body = json!({ "reason": reason, "grant_for": grant_for });
            call(args, "POST", &format!("/approvals/{}/approve", segment(id)?), Some(body))?
        }
        ApprovalsCommand::Deny { id, reason } => {
            call(args, "POST", &format!("/approvals/{}/deny", segment(id)?), Some(json!({ "reason": reason })))?
        }
        ApprovalsCommand::Justify { id, reason } => {
            call(args, "POST", &format!("/approvals/{}/justify", segment(id)?), Some(json!({ "reason": reason })))?
        }
        ApprovalsCommand::Grants => call(args, "GET", "/grants", None)?,
        ApprovalsCommand::Revoke { id } => call(args, "DELETE", &format!("/grants/{}", segment(id)?), None)?,
    };
    let answer = &answer;
    if args.json {
        say!("{}", serde_json::to_string_pretty(answer).unwrap_or_default());
        return Ok(());
    }
    // What clients and approvers wrote reaches a terminal: nothing of it
    // may move the cursor, recolour or reorder what is shown.
    let answer = &visible(answer.clone());
    match &args.command {
        ApprovalsCommand::List { .. } => print_requests(answer["approvals"].as_array().map_or(&[][..], Vec::as_slice)),
        ApprovalsCommand::Show { .. } => print_request(answer),
        ApprovalsCommand::Approve { id, .. } => match answer["state"].as_str() {
            Some("approved") => {
                say!("approved {id}: the held statement runs");
                if let Some(g) = at(answer, "/grant/id").as_str() {
                    say!("grant {g} until {}", at(answer, "/grant/expires").as_str().unwrap_or("?"));
                }
            }
            _ => say!("approval counted for {id}: {} more people must approve", answer["needed"]),
        },
        ApprovalsCommand::Deny { id, .. } => say!("denied {id}"),
        ApprovalsCommand::Justify { id, .. } => say!("reason given for {id}"),
        ApprovalsCommand::Grants => print_grants(answer["grants"].as_array().map_or(&[][..], Vec::as_slice)),
        ApprovalsCommand::Revoke { id } => say!("revoked {id}"),
    }
    Ok(())
}

/// `value` with every control character of its strings (but newline and
/// tab), and the marks that reorder text on screen, written as `\u{..}`
/// escapes.
fn visible(value: Value) -> Value {
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

/// An id as one path segment: ids are letters, digits and `-`.
fn segment(id: &str) -> Result<&str, Failure> {
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        Ok(id)
    } else {
        Err(Failure::Usage(format!("{id:?} is not an approval or grant id")))
    }
}

/// The value at a JSON pointer, or null.
fn at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    v.pointer(pointer).unwrap_or(&Value::Null)
}

fn who(requester: &Value) -> String {
    let subject = requester["subject"].as_str().unwrap_or("?");
    match requester["actor"].as_str() {
        Some(actor) => format!("{actor} for {subject}"),
        None => subject.to_string(),
    }
}

/// "in 14m", "3m ago": a time of the API's relative to now.
fn relative(text: &str) -> String {
    let Some(t) = portcullis_audit::time::parse_utc(text) else { return text.to_string() };
    let now = SystemTime::now();
    match t.duration_since(now) {
        Ok(ahead) => format!("in {}", short(ahead)),
        Err(e) => format!("{} ago", short(e.duration())),
    }
}

fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The first line of a statement, cut to `n` characters.
fn cut(sql: &str, n: usize) -> String {
    let line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= n {
        line
    } else {
        format!("{}…", line.chars().take(n.saturating_sub(1)).collect::<String>())
    }
}

fn print_requests(requests: &[Value]) {
    if requests.is_empty() {
        say!("no requests");
        return;
    }
    let rows: Vec<[String; 6]> = requests
        .iter()
        .map(|r| {
            [
                r["id"].as_str().unwrap_or("?").to_string(),
                at(r, "/state/state").as_str().unwrap_or("?").to_string(),
                who(&r["requester"]),
                r["rule"].as_str().unwrap_or("-").to_string(),
                relative(r["expires"].as_str().unwrap_or("")),
                cut(at(r, "/statements/0/sql").as_str().unwrap_or(""), 60),
            ]
        })
        .collect();
    table(&["ID", "STATE", "REQUESTER", "RULE", "EXPIRES", "STATEMENT"], &rows);
}

fn print_grants(grants: &[Value]) {
    if grants.is_empty() {
        say!("no grants");
        return;
    }
    let rows: Vec<[String; 5]> = grants
        .iter()
        .map(|g| {
            let by: Vec<&str> =
                g["granted_by"].as_array().map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
            [
                g["id"].as_str().unwrap_or("?").to_string(),
                who(&g["requester"]),
                g["fingerprint"].as_str().unwrap_or("?").to_string(),
                by.join(", "),
                relative(g["expires"].as_str().unwrap_or("")),
            ]
        })
        .collect();
    table(&["ID", "FOR", "FINGERPRINT", "GRANTED BY", "EXPIRES"], &rows);
}

fn table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) {
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

fn print_request(r: &Value) {
    say!("request    {}", r["id"].as_str().unwrap_or("?"));
    say!("state      {}", at(r, "/state/state").as_str().unwrap_or("?"));
    if let Some(by) = at(r, "/state/by").as_str() {
        say!("denied by  {by}: {}", at(r, "/state/reason").as_str().unwrap_or(""));
    }
    say!("requester  {}", who(&r["requester"]));
    say!("rule       {} ({})", r["rule"].as_str().unwrap_or("-"), r["reason"].as_str().unwrap_or(""));
    say!("why        {}", r["justification"].as_str().unwrap_or("(no reason given)"));
    let approvers: Vec<&str> =
        r["approvers"].as_array().map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
    say!(
        "approvers  {} ({} needed, self-approval {})",
        approvers.join(", "),
        at(r, "/terms/approvals"),
        at(r, "/terms/self_approval").as_str().unwrap_or("?")
    );
    say!("created    {} ({})", r["created"].as_str().unwrap_or("?"), relative(r["created"].as_str().unwrap_or("")));
    say!("expires    {} ({})", r["expires"].as_str().unwrap_or("?"), relative(r["expires"].as_str().unwrap_or("")));
    for (i, s) in r["statements"].as_array().map_or(&[][..], Vec::as_slice).iter().enumerate() {
        say!("statement {}:", i + 1);
        for line in s["sql"].as_str().unwrap_or("").lines() {
            say!("    {line}");
        }
        for (n, p) in s["parameters"].as_array().map_or(&[][..], Vec::as_slice).iter().enumerate() {
            say!("    ${} = {}", n + 1, p.as_str().map_or_else(|| "NULL".to_string(), |v| format!("'{v}'")));
        }
    }
    match r["plan"].as_array() {
        None => say!("plan       (being planned)"),
        Some(plans) => {
            for (i, p) in plans.iter().enumerate() {
                if p["state"] == "planned" {
                    let relations: Vec<&str> =
                        p["relations"].as_array().map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
                    let rows = p["estimated_rows"].as_u64().unwrap_or(0);
                    say!(
                        "plan {}     about {rows} row{}, touching {} (cost {})",
                        i + 1,
                        if rows == 1 { "" } else { "s" },
                        if relations.is_empty() { "no table".to_string() } else { relations.join(", ") },
                        p["estimated_cost"].as_str().unwrap_or("?")
                    );
                } else {
                    say!("plan {}     none: {}", i + 1, p["why"].as_str().unwrap_or("?"));
                }
            }
        }
    }
    for v in r["votes"].as_array().map_or(&[][..], Vec::as_slice) {
        say!(
            "approved by {} at {}: {}",
            v["approver"].as_str().unwrap_or("?"),
            v["at"].as_str().unwrap_or("?"),
            v["reason"].as_str().unwrap_or("")
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use super::*;

    #[test]
    fn what_others_wrote_cannot_steer_the_terminal() {
        let answer = json!({"sql": "DELETE FROM t\n\tWHERE note = '\u{1b}[2J\u{7}\r\u{9b}31m \u{202e}gnp.exe'"});
        assert_eq!(
            visible(answer)["sql"],
            "DELETE FROM t\n\tWHERE note = '\\u{1b}[2J\\u{7}\\u{d}\\u{9b}31m \\u{202e}gnp.exe'"
        );
    }
}
