//! `pg-proxy approvals`: the approvals API of a running gateway, from a
//! terminal or a script.
//!
//! Exit codes: `0` success; `1` the gateway refused (not an approver, your
//! own request, decided already, no such request...: its message is
//! printed); `2` bad usage, or no token; `3` the admin server could not be
//! reached or answered something that is not the API.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::admin_api::{call, relative, table, visible, AdminConnection, Failure};
use super::say_line;

#[derive(Args)]
pub(crate) struct ApprovalsArgs {
    #[command(flatten)]
    connection: AdminConnection,
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

pub(crate) fn run(args: ApprovalsArgs) -> ExitCode {
    match call_and_print(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

fn call_and_print(args: &ApprovalsArgs) -> Result<(), Failure> {
    let answer = match &args.command {
        ApprovalsCommand::List { state } => call(&args.connection, "GET", &format!("/approvals?state={state}"), None)?,
        ApprovalsCommand::Show { id } => call(&args.connection, "GET", &format!("/approvals/{}", segment(id)?), None)?,
        ApprovalsCommand::Approve { id, reason, grant_for } => {
            let body = json!({ "reason": reason, "grant_for": grant_for });
            call(&args.connection, "POST", &format!("/approvals/{}/approve", segment(id)?), Some(body))?
        }
        ApprovalsCommand::Deny { id, reason } => call(
            &args.connection,
            "POST",
            &format!("/approvals/{}/deny", segment(id)?),
            Some(json!({ "reason": reason })),
        )?,
        ApprovalsCommand::Justify { id, reason } => call(
            &args.connection,
            "POST",
            &format!("/approvals/{}/justify", segment(id)?),
            Some(json!({ "reason": reason })),
        )?,
        ApprovalsCommand::Grants => call(&args.connection, "GET", "/grants", None)?,
        ApprovalsCommand::Revoke { id } => {
            call(&args.connection, "DELETE", &format!("/grants/{}", segment(id)?), None)?
        }
    };
    let answer = &answer;
    if args.connection.json {
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
