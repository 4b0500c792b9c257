//! Fuzz target `mask_row`: arbitrary row bytes through a masker built from
//! an arbitrary statement and column set.
//!
//! The masks cover the usual strategies; the statement text decides the
//! lineage; each column is given or not given a source, text or not, binary
//! or not. `mask_row` must not panic, must keep the row's length, must
//! leave values of unmasked columns byte-identical (and borrowed), and a
//! masked value is NULL or valid UTF-8.

#![no_main]

use std::borrow::Cow;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use policy_core::{ColumnInfo, Engine, Identity, Keys, Policy};

const POLICY: &str = r#"
version = 1
[[mask]]
name = "ssn"
columns = ["*.*.ssn"]
strategy = "partial"
show_last = 4
[[mask]]
name = "email"
columns = ["public.users.email"]
strategy = "email"
[[mask]]
name = "hash"
columns = ["public.users.name"]
strategy = "hash"
[[mask]]
name = "null"
columns = ["public.users.salary"]
strategy = "null"
[[mask]]
name = "fixed"
columns = ["public.users.note"]
strategy = "fixed"
value = "[hidden]"
exempt_groups = ["pii-readers"]
"#;

const SOURCES: [&str; 6] =
    ["public.users.ssn", "public.users.email", "public.users.name", "public.users.salary", "public.users.note", "public.orders.id"];

#[derive(Debug, Arbitrary)]
struct Column {
    source: Option<u8>,
    text_type: bool,
    binary: bool,
}

#[derive(Debug, Arbitrary)]
struct Input {
    sql: String,
    exempt: bool,
    columns: Vec<Column>,
    row: Vec<Option<Vec<u8>>>,
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| match Policy::from_toml_str(POLICY, "mask.toml") {
        Ok(p) => match Engine::new(p, Keys { pseudonym_key: Some(b"fuzz".to_vec()) }) {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        },
        Err(e) => panic!("{e}"),
    })
}

fuzz_target!(|input: Input| {
    let e = engine();
    let analysis = e.analyze(&e.new_session(), &input.sql);
    let Some(facts) = analysis.statements.first() else { return };
    let columns: Vec<ColumnInfo> = input
        .columns
        .iter()
        .take(32)
        .enumerate()
        .map(|(i, c)| ColumnInfo {
            name: format!("c{i}"),
            source: c.source.map(|s| SOURCES[usize::from(s) % SOURCES.len()].to_string()),
            text_type: c.text_type,
            binary: c.binary,
        })
        .collect();
    let who = if input.exempt { Identity::new("r").with_groups(["pii-readers"]) } else { Identity::new("b") };
    let masker = e.masker(&who, facts, &columns);
    let mut row: Vec<Option<Cow<'_, [u8]>>> = input.row.iter().map(|v| v.as_deref().map(Cow::Borrowed)).collect();
    masker.mask_row(&mut row);
    if row.len() != input.row.len() {
        panic!("row length changed");
    }
    for (i, (after, before)) in row.iter().zip(&input.row).enumerate() {
        match masker.mask_of(i) {
            None => {
                if after.as_deref() != before.as_deref() || matches!(after, Some(Cow::Owned(_))) {
                    panic!("unmasked column {i} changed");
                }
            }
            Some(_) => {
                if let Some(v) = after {
                    if before.is_some() && std::str::from_utf8(v).is_err() {
                        panic!("masked column {i} is not UTF-8");
                    }
                }
            }
        }
    }
});
