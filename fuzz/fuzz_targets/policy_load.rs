//! Fuzz target `policy_load`: arbitrary bytes as a policy file.
//!
//! * Text that is not UTF-8 is skipped (the loader takes `&str`).
//! * A policy that loads must build an engine (or be refused with an error,
//!   e.g. a `hash` mask without a key), decide a fixed statement, and run
//!   its own `[[test]]`s, without panicking.
//! * A policy that does not load must say where: its `Display` starts with
//!   the file name given, then `:line:col: ` with 1-based numbers inside the
//!   text, and `PolicyError::location()` agrees.

#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_core::{Engine, Identity, Keys, Policy};

const FILE: &str = "fuzz-policy.toml";
const SQL: &str = "SELECT o.id, o.total FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = 7";

/// `"<line>:<col>: ..."` → (line, col).
fn line_col(rest: &str) -> Option<(usize, usize)> {
    let (line, rest) = rest.split_once(':')?;
    let (col, rest) = rest.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(line) || !digits(col) || !rest.starts_with(' ') {
        return None;
    }
    Some((line.parse().ok()?, col.parse().ok()?))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Policy::from_toml_str(text, FILE) {
        Ok(policy) => {
            if policy.source != FILE {
                panic!("policy.source is {:?}, not {FILE:?}", policy.source);
            }
            let Ok(engine) = Engine::new(policy, Keys::default()) else { return };
            let session = engine.new_session();
            let who = Identity::new("fuzz").with_groups(["ai-agents", "developers"]);
            let d = engine.decide(&who, &session, SQL);
            if d.statements.len() != 1 {
                panic!("one statement decided as {} statements: {d:?}", d.statements.len());
            }
            // The policy's own tests run arbitrary SQL under arbitrary
            // identities and search paths: a few of them at most.
            if engine.policy().tests.len() <= 8 {
                let _ = engine.run_tests();
            }
        }
        Err(e) => {
            let shown = e.to_string();
            let Some(rest) = shown.strip_prefix(FILE).and_then(|r| r.strip_prefix(':')) else {
                panic!("error does not start with `{FILE}:`: {shown:?}");
            };
            let Some((line, col)) = line_col(rest) else {
                panic!("error does not continue with `line:col: `: {shown:?}");
            };
            let lines = text.matches('\n').count() + 1;
            if line == 0 || col == 0 || line > lines {
                panic!("error position {line}:{col} is outside the text ({lines} lines): {shown:?}");
            }
            let line_chars = text.split('\n').nth(line - 1).map_or(0, |l| l.chars().count());
            if col > line_chars + 1 {
                panic!("error column {col} is past the end of line {line} ({line_chars} characters): {shown:?}");
            }
            match e.location() {
                Some(l) if l.file == FILE && l.line == line && l.column == col => {}
                other => panic!("location() {other:?} disagrees with the message {shown:?}"),
            }
        }
    }
});
