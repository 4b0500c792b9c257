//! Reading the value of a constant, on the record.
//!
//! The decision cache may reuse one statement's decision for another that
//! differs only in its constants (see [`crate::shape`]). That is sound only
//! when the decision never looked at a constant's value: `WHERE id = 5` and
//! `WHERE id = 6` bound a DELETE alike, `WHERE 1 = 1` and `WHERE 1 = 2` do
//! not. Every read of a value therefore goes through [`value`], which notes
//! the read for the decision being made on this thread; a decision that
//! read one is cached for its exact text only.
//!
//! [`kind`] tells a constant's kind without noting a read: the kind follows
//! from the token the scanner returned (`5` is an integer, `5000000000` and
//! `5.0` are numerics, `'5'` a string; `NULL`, `TRUE` and `FALSE` are
//! keywords), and the shape keeps every token's kind.

use std::cell::Cell;

use pg_query::protobuf::{self as pb, a_const::Val};

thread_local! {
    static READ: Cell<bool> = const { Cell::new(false) };
}

/// Starts recording reads for one decision.
pub(crate) fn start() {
    READ.with(|r| r.set(false));
}

/// Whether a value was read since [`start`].
pub(crate) fn was_read() -> bool {
    READ.with(Cell::get)
}

/// Notes that the decision depends on a constant's value (or on the text
/// itself, as a rule's `pattern` does).
pub(crate) fn note_read() {
    READ.with(|r| r.set(true));
}

/// The value of a constant; `None` for NULL.
pub(crate) fn value(c: &pb::AConst) -> Option<&Val> {
    note_read();
    if c.isnull {
        None
    } else {
        c.val.as_ref()
    }
}

/// What kind of constant `c` is, without reading its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Integer,
    Numeric,
    Bool,
    String,
    BitString,
}

/// The kind of a constant (see the module docs for why this is not a read).
pub(crate) fn kind(c: &pb::AConst) -> Kind {
    if c.isnull {
        return Kind::Null;
    }
    match &c.val {
        Some(Val::Ival(_)) => Kind::Integer,
        Some(Val::Fval(_)) => Kind::Numeric,
        Some(Val::Boolval(_)) => Kind::Bool,
        Some(Val::Sval(_)) => Kind::String,
        Some(Val::Bsval(_)) => Kind::BitString,
        None => Kind::Null,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

    /// The cache's soundness rests on every read of a constant's value
    /// going through [`super::value`]: no other source file may touch an
    /// `A_Const`'s `val` (the generated walker only destructures it).
    #[test]
    fn constant_values_are_read_here_only() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.clone()];
        let mut offenders = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".rs") || name == "literal.rs" || name == "walk.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                // `rt.val` is a ResTarget's expression, not a constant.
                let reads_val = line.match_indices(".val").any(|(i, _)| {
                    !line[i + 4..].starts_with(|c: char| c.is_alphanumeric() || c == '_') && !line[..i].ends_with("rt")
                });
                if reads_val || line.contains("AConst {") {
                    offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
        assert!(offenders.is_empty(), "constant values read outside literal::value:\n{}", offenders.join("\n"));
    }
}
