//! Embedding the Portcullis engine in a Rust program: the same steps as
//! `examples/c/decide.c` and `examples/python/decide.py`, on the crate.
//!
//! ```text
//! cargo run -p portcullis-example -- examples/policy.toml
//! ```

use std::borrow::Cow;
use std::process::ExitCode;

use policy_core::{Actor, ColumnInfo, Engine, Identity, Keys, Policy};

const STATEMENTS: [&str; 4] = [
    "SELECT id, total FROM orders WHERE customer_id = 42",
    "DROP TABLE orders",
    "DELETE FROM orders WHERE id = 7",
    "SELECT * FROM orders; SELECT api_key FROM secrets",
];

fn main() -> ExitCode {
    let path = std::env::args().nth(1).unwrap_or_else(|| "examples/policy.toml".into());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read `{path}`: {e}");
            return ExitCode::from(2);
        }
    };
    // Errors carry the file, line and column: `policy.toml:12:1: unknown field ...`.
    let engine = match Policy::from_toml_str(&text, &path).and_then(|p| Engine::new(p, Keys::default())) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };

    // An agent acting for a person, as a verified token would name it.
    let agent = Identity::new("alice@example.com").with_groups(["ai-agents"]).with_actor(Actor::new("copilot-7"));
    let session = engine.new_session();
    for sql in STATEMENTS {
        let d = engine.decide(&agent, &session, sql);
        println!("{:<16} {:<28} {sql}", d.verdict.as_str(), d.rule.as_deref().unwrap_or("-"));
    }

    // Masking one result row: the columns as the server describes them.
    let sql = "SELECT name, email, ssn, note FROM customers";
    let d = engine.decide(&agent, &session, sql);
    let Some(statement) = d.statements.first() else {
        eprintln!("error: no statement in `{sql}`");
        return ExitCode::from(1);
    };
    let columns: Vec<ColumnInfo> = ["name", "email", "ssn", "note"]
        .iter()
        .map(|c| ColumnInfo::text(c, Some(&format!("public.customers.{c}"))))
        .collect();
    let masker = engine.masker(&agent, &statement.facts, &columns);
    let mut row: Vec<Option<Cow<'_, [u8]>>> =
        ["Alice Martin", "alice@example.com", "123-45-6789", "card on file: 4012888888881881"]
            .iter()
            .map(|v| Some(Cow::Borrowed(v.as_bytes())))
            .collect();
    let changed = masker.mask_row(&mut row);
    let shown: Vec<String> =
        row.iter().map(|v| v.as_ref().map_or("NULL".into(), |b| String::from_utf8_lossy(b).into_owned())).collect();
    println!("masked {changed} of {}: {}", row.len(), shown.join(" | "));
    ExitCode::SUCCESS
}
