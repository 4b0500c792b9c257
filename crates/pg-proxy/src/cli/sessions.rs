//! `pg-proxy sessions`: a running gateway's live sessions, listed and
//! ended through its admin API.
//!
//! Exit codes: `0` success; `1` the gateway refused (no such session, not
//! yours...: its message is printed); `2` bad usage, or no token; `3` the
//! admin server could not be reached or answered something that is not
//! the API.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::admin_api::{call, short, table, visible, AdminConnection, Failure};
use super::say_line;

#[derive(Args)]
pub(crate) struct SessionsArgs {
    #[command(flatten)]
    connection: AdminConnection,
    #[command(subcommand)]
    command: SessionsCommand,
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List live sessions: yours and your agents', or every session for
    /// members of an `[admin] operators` group.
    List,
    /// End a session: its client gets `57P01` and is disconnected; a
    /// statement it runs is cancelled.
    Kill {
        /// The session's id (from `list`).
        id: u64,
        /// Cancel what it runs or holds (`57014`) and leave it connected.
        #[arg(long)]
        cancel: bool,
    },
}

pub(crate) fn run(args: SessionsArgs) -> ExitCode {
    match call_and_print(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

fn call_and_print(args: &SessionsArgs) -> Result<(), Failure> {
    let answer = match &args.command {
        SessionsCommand::List => call(&args.connection, "GET", "/sessions", None)?,
        SessionsCommand::Kill { id, cancel: false } => {
            call(&args.connection, "DELETE", &format!("/sessions/{id}"), None)?
        }
        SessionsCommand::Kill { id, cancel: true } => {
            call(&args.connection, "POST", &format!("/sessions/{id}/cancel"), None)?
        }
    };
    if args.connection.json {
        say!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
        return Ok(());
    }
    match &args.command {
        SessionsCommand::List => {
            let answer = visible(answer);
            print_sessions(answer.get("sessions").and_then(Value::as_array).map_or(&[][..], Vec::as_slice));
        }
        SessionsCommand::Kill { id, cancel: false } => say!("session {id} ended"),
        SessionsCommand::Kill { id, cancel: true } => say!("session {id}: its statement cancelled"),
    }
    Ok(())
}

fn print_sessions(sessions: &[Value]) {
    if sessions.is_empty() {
        say!("no sessions");
        return;
    }
    let rows: Vec<[String; 7]> = sessions
        .iter()
        .map(|s| {
            [
                s["id"].to_string(),
                s["subject"].as_str().unwrap_or("?").to_string(),
                s["actor"].as_str().unwrap_or("-").to_string(),
                s["client"].as_str().unwrap_or("?").to_string(),
                s["activity"].as_str().unwrap_or("?").to_string(),
                s["fingerprint"].as_str().unwrap_or("-").to_string(),
                short(Duration::from_secs(s["age_seconds"].as_u64().unwrap_or(0))),
            ]
        })
        .collect();
    table(&["ID", "PERSON", "AGENT", "CLIENT", "STATE", "STATEMENT", "AGE"], &rows);
}
