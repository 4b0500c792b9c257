//! Fuzz target `mask_row`: arbitrary row bytes through a masker built from
//! an arbitrary statement, column set and detector set.
//!
//! The masks cover the usual strategies; the statement text decides the
//! lineage; each column is given or not given a source, a type (text,
//! numbers, JSON, arrays, an unknown type) and a format; a bit set picks
//! the detector kinds. `mask_row` must not panic, must keep the row's
//! length, must leave values of unmasked columns byte-identical (and
//! borrowed) when no detector is on, a masked value is NULL or valid
//! UTF-8, a text-format JSON value that was valid JSON stays valid JSON,
//! and values of types that hold no text are never touched by detectors.

#![no_main]

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

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

const SOURCES: [&str; 6] = [
    "public.users.ssn",
    "public.users.email",
    "public.users.name",
    "public.users.salary",
    "public.users.note",
    "public.orders.id",
];

/// text, int4, numeric, json, jsonb, text[], an unknown type, bytea.
const TYPES: [u32; 8] = [25, 23, 1700, 114, 3802, 1009, 16_500, 17];
const NO_TEXT: [u32; 3] = [23, 1700, 17];

const KINDS: [&str; 9] =
    ["credit_card", "us_ssn", "email", "phone", "iban", "ipv4", "aws_access_key", "jwt", "private_key"];

#[derive(Debug, Arbitrary)]
struct Column {
    source: Option<u8>,
    type_index: u8,
    binary: bool,
}

#[derive(Debug, Arbitrary)]
struct Input {
    sql: String,
    exempt: bool,
    /// Which detector kinds are on (bit i: `KINDS[i]`), each its own
    /// detector with a strategy picked by the bit's position.
    kinds: u16,
    columns: Vec<Column>,
    row: Vec<Option<Vec<u8>>>,
}

/// One engine per detector set, built once.
fn engine(kinds: u16) -> Arc<Engine> {
    static ENGINES: OnceLock<Mutex<HashMap<u16, Arc<Engine>>>> = OnceLock::new();
    let kinds = kinds & 0x1ff;
    let mut engines = match ENGINES.get_or_init(Default::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    Arc::clone(engines.entry(kinds).or_insert_with(|| {
        let mut policy = POLICY.to_string();
        for (i, kind) in KINDS.iter().enumerate() {
            if kinds & (1 << i) != 0 {
                let strategy = ["partial", "redact", "hash", "fixed", "null", "email"][i % 6];
                let value = if strategy == "fixed" { "value = \"a \\\"b\\\" {c}\"\n" } else { "" };
                policy.push_str(&format!(
                    "[[detector]]\nname = \"d{i}\"\nkinds = [\"{kind}\"]\nstrategy = \"{strategy}\"\n{value}\
                     exempt_groups = [\"pii-readers\"]\n"
                ));
            }
        }
        match Policy::from_toml_str(&policy, "mask.toml") {
            Ok(p) => match Engine::new(p, Keys { pseudonym_key: Some(b"fuzz".to_vec()) }) {
                Ok(e) => Arc::new(e),
                Err(e) => panic!("{e}"),
            },
            Err(e) => panic!("{e}"),
        }
    }))
}

fuzz_target!(|input: Input| {
    let e = engine(input.kinds);
    let detecting = input.kinds & 0x1ff != 0 && !input.exempt;
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
            type_oid: TYPES[usize::from(c.type_index) % TYPES.len()],
            binary: c.binary,
            row_fields: Vec::new(),
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
        let column = columns.get(i);
        let type_oid = column.map_or(0, |c| c.type_oid);
        match masker.mask_of(i) {
            None if column.is_none() || !detecting || NO_TEXT.contains(&type_oid) => {
                if after.as_deref() != before.as_deref() || matches!(after, Some(Cow::Owned(_))) {
                    panic!("unmasked column {i} changed");
                }
            }
            None => {
                let text_json = type_oid == 114 || (type_oid == 3802 && column.is_some_and(|c| !c.binary));
                if let (Some(before), Some(after)) = (before, after) {
                    if text_json && serde_json::from_slice::<serde_json::Value>(before).is_ok() {
                        if let Err(err) = serde_json::from_slice::<serde_json::Value>(after) {
                            panic!("column {i}: JSON broken by a detector: {err}");
                        }
                    }
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
