//! The shape of a text: the text with each constant replaced by a marker
//! of its kind, so that `... WHERE aid = 17` and `... WHERE aid = 42` share
//! one decision-cache entry.
//!
//! The constants are found by PostgreSQL's own scanner (`pg_query`'s
//! `scan_tokens`, the lexer the parser runs, without the parse). Everything
//! between constants is kept byte for byte, so two texts of one shape lex
//! to the same tokens but for the constants' values, and parse to the same
//! tree but for the values of its `A_Const` nodes. Whether a decision may
//! be shared across a shape is the analysis's call (see
//! `analyze::literal`); this module only computes the key.
//!
//! No shape is given (and the text is cached as itself) when:
//! - the scanner fails, or the text holds a NUL byte;
//! - the text holds `U&` identifiers or strings: their `UESCAPE 'c'`
//!   clause is a constant that changes an identifier;
//! - the text holds `FLOAT`: `float(24)` and `float(25)` are different
//!   types;
//! - a constant's bounds do not look like a constant's (a guard against a
//!   scanner surprise: a wrong bound must never fold a keyword away).

use std::ops::Range;

use pg_query::protobuf::Token;

/// Marks a constant in a shape key; the scanner refuses a NUL in the text,
/// so no text holds one.
const MARK: char = '\0';

/// A text's shape: the key, and where its constants were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The text with each constant replaced by `\0` and a letter for its kind.
    pub key: String,
    /// Byte ranges of the constants in the original text, in order.
    constants: Vec<Range<usize>>,
}

/// Bytes a constant takes in the key.
const MARK_LEN: usize = 2;

impl Shape {
    /// The shape of `sql`, or `None` when it has none (see the module docs).
    /// A text without constants has a shape equal to itself.
    pub(crate) fn of(sql: &str) -> Option<Shape> {
        // `pg_query::scan_tokens` builds a slice from a null pointer when the
        // scanner finds no token: only blank texts, which need no shape.
        if sql.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)) {
            return None;
        }
        let tokens = pg_query::scan_tokens(sql).ok()?;
        let mut key = String::with_capacity(sql.len());
        let mut constants = Vec::new();
        // End of the last token seen, and of the text already in the key.
        let (mut prev_end, mut copied) = (0usize, 0usize);
        for t in &tokens {
            let start = usize::try_from(t.start).ok()?;
            let end = usize::try_from(t.end).ok()?;
            if start < prev_end || end < start || end > sql.len() {
                return None;
            }
            let letter = match Token::try_from(t.token).ok()? {
                Token::Uident | Token::Usconst | Token::Uescape | Token::FloatP => return None,
                Token::Iconst => 'i',
                Token::Fconst => 'f',
                Token::Sconst => 's',
                Token::Bconst => 'b',
                Token::Xconst => 'x',
                _ => {
                    prev_end = end;
                    continue;
                }
            };
            let text = sql.get(start..end)?;
            if !looks_like_constant(letter, text) {
                return None;
            }
            key.push_str(sql.get(copied..start)?);
            key.push(MARK);
            key.push(letter);
            constants.push(start..end);
            (prev_end, copied) = (end, end);
        }
        key.push_str(sql.get(copied..)?);
        Some(Shape { key, constants })
    }

    /// Whether the text had any constant.
    pub(crate) fn has_constants(&self) -> bool {
        !self.constants.is_empty()
    }

    /// Maps an offset in the original text (never inside a constant) to
    /// the key.
    pub(crate) fn key_offset(&self, offset: usize) -> usize {
        let mut key = offset as isize;
        for c in self.constants.iter().take_while(|c| c.end <= offset) {
            key += MARK_LEN as isize - c.len() as isize;
        }
        key.max(0) as usize
    }

    /// Maps an offset in the key (never inside a mark) back to this text.
    pub(crate) fn text_offset(&self, key_offset: usize) -> usize {
        // `diff` is text position minus key position before constant `c`.
        let mut diff: isize = 0;
        for c in &self.constants {
            let key_start = c.start as isize - diff;
            if key_offset as isize <= key_start {
                break;
            }
            diff += c.len() as isize - MARK_LEN as isize;
        }
        (key_offset as isize + diff).max(0) as usize
    }
}

/// Whether `text` has the bounds of a constant of kind `letter`.
fn looks_like_constant(letter: char, text: &str) -> bool {
    let (Some(first), Some(last)) = (text.chars().next(), text.chars().last()) else { return false };
    match letter {
        'i' | 'f' => first.is_ascii_digit() || first == '.',
        's' => matches!(first, '\'' | 'E' | 'e' | '$') && matches!(last, '\'' | '$'),
        'b' => matches!(first, 'B' | 'b') && last == '\'',
        'x' => matches!(first, 'X' | 'x') && last == '\'',
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

    use super::*;

    fn key(sql: &str) -> Option<String> {
        Shape::of(sql).map(|s| s.key.replace(MARK, "#"))
    }

    #[test]
    fn constants_are_replaced_by_their_kind() {
        assert_eq!(key("SELECT a FROM t WHERE id = 17").unwrap(), "SELECT a FROM t WHERE id = #i");
        assert_eq!(
            key("SELECT 1.5, 'x', E'y\\'', $q$z$q$, B'01', X'ff', 5000000000").unwrap(),
            "SELECT #f, #s, #s, #s, #b, #x, #f"
        );
        // Keywords, identifiers, parameters, comments stay as written.
        assert_eq!(
            key("select NULL, true, \"Ab\", $1 /* 5 */ -- 6\n").unwrap(),
            "select NULL, true, \"Ab\", $1 /* 5 */ -- 6\n"
        );
        // A string continued on the next line is one constant.
        assert_eq!(key("SELECT 'a'\n'b' FROM t").unwrap(), "SELECT #s FROM t");
    }

    #[test]
    fn same_shape_only_for_different_constants() {
        assert_eq!(key("SELECT * FROM t WHERE a = 1"), key("SELECT * FROM t WHERE a = 123456"));
        assert_ne!(key("SELECT * FROM t WHERE a = 1"), key("SELECT * FROM t WHERE a = '1'"));
        assert_ne!(key("SELECT * FROM t WHERE a = 1"), key("SELECT * FROM t WHERE b = 1"));
        assert_ne!(key("SELECT * FROM t WHERE a = 1"), key("SELECT * FROM t WHERE a =  1"));
        assert_ne!(key("SELECT 1"), key("SELECT 5000000000"));
    }

    #[test]
    fn no_shape_where_a_constant_changes_more_than_a_value() {
        assert_eq!(key("SELECT U&\"d!0061ta\" UESCAPE '!' FROM t"), None);
        assert_eq!(key("SELECT U&'x' FROM t"), None);
        assert_eq!(key("SELECT x::float(24) FROM t"), None);
        assert_eq!(key("SELECT 'unterminated"), None);
        assert_eq!(key("SELECT 1\0"), None);
        assert_eq!(key(""), None);
        assert_eq!(key(" \n\t"), None);
    }

    #[test]
    fn offsets_map_both_ways() {
        let sql = "SELECT 1; SELECT 'abc', 22; SELECT x";
        let s = Shape::of(sql).unwrap();
        for (i, _) in sql.match_indices(';').chain(sql.match_indices(" SELECT")) {
            let k = s.key_offset(i);
            assert_eq!(&s.key[k..=k], &sql[i..=i], "offset {i}");
            assert_eq!(s.text_offset(k), i);
        }
        assert_eq!(s.text_offset(s.key_offset(sql.len())), sql.len());
        assert_eq!(s.key_offset(0), 0);
    }
}
