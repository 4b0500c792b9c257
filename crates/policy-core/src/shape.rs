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

use std::hash::{BuildHasher, Hasher};
use std::ops::Range;
use std::sync::Arc;

use pg_query::protobuf::Token;
use smallvec::SmallVec;

/// Marks a constant in a shape key; the scanner refuses a NUL in the text,
/// so no text holds one.
const MARK: char = '\0';

/// A text's shape: the key, and where its constants were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The text with each constant replaced by `\0` and a letter for its
    /// kind (shared: every shape a template derives has the same key).
    pub key: Arc<str>,
    /// Byte ranges of the constants in the original text, in order.
    constants: SmallVec<[Range<usize>; 4]>,
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
        let mut constants = SmallVec::new();
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
        Some(Shape { key: Arc::from(key), constants })
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

    /// Maps a span in the key (never cutting a mark) back to this text.
    pub(crate) fn span_to_text(&self, span: &Range<usize>) -> Range<usize> {
        span_to_text(&self.constants, span)
    }
}

/// Maps a span in a shape's key (a statement's, never cutting a mark) back
/// to the text whose constants are `constants`.
fn span_to_text(constants: &[Range<usize>], span: &Range<usize>) -> Range<usize> {
    text_offset(constants, span.start)..text_offset(constants, span.end)
}

/// Maps an offset in a shape's key (never inside a mark) back to the text
/// whose constants are `constants`.
pub(crate) fn text_offset(constants: &[Range<usize>], key_offset: usize) -> usize {
    // `diff` is text position minus key position before constant `c`.
    let mut diff: isize = 0;
    for c in constants {
        let key_start = c.start as isize - diff;
        if key_offset as isize <= key_start {
            break;
        }
        diff += c.len() as isize - MARK_LEN as isize;
    }
    (key_offset as isize + diff).max(0) as usize
}

/// A text with each maximal run of ASCII digits hidden: the key under
/// which texts that differ only in their digits meet, found without
/// running the scanner. The key (the text with each run replaced by one
/// `\0`) is hashed and compared where the text lies, and written out only
/// for a new [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DigitMask<'a> {
    sql: &'a str,
    /// The runs, in order (most statements have a few).
    runs: SmallVec<[Range<usize>; 8]>,
    /// The length of the key: the text's, less the runs' digits, plus one
    /// mark per run.
    key_len: usize,
}

impl<'a> DigitMask<'a> {
    /// The mask of `sql`; `None` when it has no digit (nothing to vary).
    pub(crate) fn of(sql: &'a str) -> Option<DigitMask<'a>> {
        let bytes = sql.as_bytes();
        let mut runs = SmallVec::new();
        let mut i = 0;
        let mut key_len = sql.len();
        while let Some(start) = next_digit(bytes, i) {
            let len = bytes.get(start..)?.iter().take_while(|b| b.is_ascii_digit()).count();
            runs.push(start..start + len);
            key_len = key_len - len + 1;
            i = start + len;
        }
        if runs.is_empty() {
            return None;
        }
        Some(DigitMask { sql, runs, key_len })
    }

    /// The text between the runs: one piece more than there are runs.
    fn pieces(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        let bytes = self.sql.as_bytes();
        let starts = std::iter::once(0).chain(self.runs.iter().map(|r| r.end));
        let ends = self.runs.iter().map(|r| r.start).chain(std::iter::once(bytes.len()));
        starts.zip(ends).map(move |(a, b)| bytes.get(a..b).unwrap_or_default())
    }

    /// The key's hash under `state`.
    pub(crate) fn hash(&self, state: &impl BuildHasher) -> u64 {
        let mut h = state.build_hasher();
        for piece in self.pieces() {
            h.write(piece);
            h.write_u8(0);
        }
        h.finish()
    }

    /// The key, written out.
    pub(crate) fn key(&self) -> String {
        let mut key = String::with_capacity(self.sql.len());
        for (i, piece) in self.pieces().enumerate() {
            if i > 0 {
                key.push(MARK);
            }
            key.push_str(std::str::from_utf8(piece).unwrap_or_default());
        }
        key
    }
}

/// Whether `sql` has an ASCII digit (a text without one has no
/// [`Template`]).
pub(crate) fn has_digit(sql: &str) -> bool {
    next_digit(sql.as_bytes(), 0).is_some()
}

/// The position of the first ASCII digit in `bytes` at or after `from`.
///
/// Reads eight bytes at a time: most of a statement's text has no digit,
/// and a chunk without one is passed with a few word operations. A byte
/// `b` is a digit when `b ^ 0x30` is below 10; the test below says whether
/// any of the eight is (exactly: borrows may mark other bytes too, but only
/// above one that is truly below 10, so "any" is right), and the chunk
/// that has one is then read byte by byte.
fn next_digit(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let rest = bytes.get(from..)?;
    let mut chunks = rest.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let word = chunk.first_chunk::<8>().map(|w| u64::from_le_bytes(*w)).unwrap_or_default();
        let x = word ^ (ONES * 0x30);
        // Bytes with the high bit set (UTF-8) are no digits, and the test
        // needs bytes below 0x80: they are cleared out of it.
        let ascii = !word & HIGHS;
        let below_ten = x.wrapping_sub(ONES * 10) & !x & HIGHS & ascii;
        if below_ten != 0 {
            if let Some(i) = chunk.iter().position(u8::is_ascii_digit) {
                return Some(from + offset + i);
            }
        }
        offset += 8;
    }
    chunks.remainder().iter().position(u8::is_ascii_digit).map(|i| from + offset + i)
}

/// What the scanner said about one text, reusable for every text with the
/// same [`DigitMask`]: which digit runs were whole integer constants
/// (`Iconst` tokens of a 32-bit value, free to change) and which were
/// something else (part of an identifier, a string, a comment, a parameter
/// number, a longer constant such as `1.5` or `0x1F`: they must be the
/// same byte for byte).
///
/// Why a text that differs from the scanned one only in the digits of such
/// integer constants, each still a 32-bit value, scans to the same tokens
/// but for those constants' values: everything else is byte for byte the
/// same; PostgreSQL's scanner reads a digit run that is a whole integer
/// constant by the rule for decimal integers, whose extent depends only on
/// the bytes after it (the same) and not on which digits it holds (the
/// `0x`, `0o`, `0b` prefixes need a letter after the `0`, and a letter
/// right after an integer is a scan error, so the scanned text had none);
/// the action of that rule only converts the value, leaving the scanner's
/// state as it was, so the next token starts in the same state; and the
/// value decides between `Iconst` and `Fconst`, which is why both values
/// must fit in 32 bits. The differential test below holds
/// [`Template::derive`] to [`Shape::of`], and the `decide` fuzz target
/// holds decisions through templates to those of an engine without a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    /// The mask this template answers for.
    pub mask: String,
    /// The scanned text's digit runs, each with `None` for an integer
    /// constant, else its bytes.
    runs: Vec<(Range<usize>, Option<Box<str>>)>,
    /// The scanned text's shape.
    shape: Shape,
    /// Where the first run starts, and the byte before it (a first look
    /// at a text, [`Template::may_fit`]).
    lead: (usize, Option<u8>),
}

impl Template {
    /// The template of `sql` (with mask `mask` and shape `shape`), or
    /// `None` when none of its digit runs is an integer constant.
    pub(crate) fn new(sql: &str, mask: &DigitMask<'_>, shape: &Shape) -> Option<Template> {
        let mut runs = Vec::with_capacity(mask.runs.len());
        let mut any = false;
        for r in &mask.runs {
            let text = sql.get(r.clone())?;
            let constant = shape
                .constants
                .binary_search_by(|c| c.start.cmp(&r.start))
                .is_ok_and(|i| shape.constants.get(i) == Some(r));
            if constant && fits_int32(text) {
                runs.push((r.clone(), None));
                any = true;
            } else {
                runs.push((r.clone(), Some(text.into())));
            }
        }
        let start = runs.first().map_or(0, |(r, _)| r.start);
        let lead = (start, start.checked_sub(1).and_then(|i| sql.as_bytes().get(i).copied()));
        any.then(|| Template { mask: mask.key(), runs, shape: shape.clone(), lead })
    }

    /// The shape of `sql` when it differs from the template's text only in
    /// the values of integer constants; `None` otherwise (then scan it).
    pub(crate) fn derive(&self, sql: &str) -> Option<Shape> {
        let constants = self.spans_of(sql, &self.shape.constants)?;
        Some(Shape { key: Arc::clone(&self.shape.key), constants })
    }

    /// Where the spans `spans` of the template's own text (in order, none
    /// overlapping, none cutting a digit run) are in `sql`, when the
    /// template gives it a shape; `None` otherwise.
    ///
    /// One pass over `sql`, with no [`DigitMask`] made: each piece of the
    /// template's text between its digit runs must be the same bytes in
    /// `sql`, and each run a run of digits there that is an integer
    /// constant where the template's was one and the same digits
    /// elsewhere. As the pieces hold no digit, the runs found are then
    /// exactly `sql`'s maximal ones: `sql` has the template's mask.
    ///
    /// A statement's span in the shape's key maps to the same span of
    /// every text of that shape this way (see [`Template::own_span`]), as
    /// through the text's constants: the runs that change length are
    /// whole integer constants, and the rest are the same bytes.
    pub(crate) fn spans_of(&self, sql: &str, spans: &[Range<usize>]) -> Option<SmallVec<[Range<usize>; 4]>> {
        let (text, mask) = (sql.as_bytes(), self.mask.as_bytes());
        // Each span's ends move by the changes of length of the runs that
        // end before them; they are written as the runs are read (both are
        // in order, and no span cuts a run).
        let mut moved = Moved::new(spans);
        // Positions in `sql`, in the mask, and the end of the template's
        // last run in its own text; how far `sql` is ahead of it.
        let (mut t, mut k, mut own, mut shift) = (0, 0, 0, 0isize);
        for (run, expected) in &self.runs {
            let piece = run.start.checked_sub(own)?;
            if text.get(t..t + piece)? != mask.get(k..k + piece)? {
                return None;
            }
            t += piece;
            k += piece + 1;
            let mut end = t;
            while text.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            let value = sql.get(t..end)?;
            match expected {
                None if end > t && fits_int32(value) => {}
                Some(bytes) if **bytes == *value => {}
                _ => return None,
            }
            moved.up_to(run.end, shift);
            shift += (end - t) as isize - run.len() as isize;
            t = end;
            own = run.end;
        }
        if text.get(t..)? != mask.get(k..)? {
            return None;
        }
        moved.up_to(usize::MAX, shift);
        (moved.next == spans.len() * 2).then_some(moved.out)
    }

    /// A first look that turns most other texts away at once: whether the
    /// first run of `sql` may start where the template's does, after the
    /// same byte. For a caller trying many templates on one text (a
    /// connection's recent shapes); [`Template::spans_of`] checks all of
    /// it again, and a template found by the text's mask needs no first
    /// look.
    #[inline]
    pub(crate) fn may_fit(&self, sql: &str) -> bool {
        let (start, before) = self.lead;
        let text = sql.as_bytes();
        text.get(start).is_some_and(u8::is_ascii_digit)
            && before.is_none_or(|b| start.checked_sub(1).and_then(|i| text.get(i)) == Some(&b))
    }

    /// A span of the shape's key (a statement's, never cutting a mark) in
    /// the template's own text.
    pub(crate) fn own_span(&self, span: &Range<usize>) -> Range<usize> {
        self.shape.span_to_text(span)
    }

    /// Bytes it holds, roughly (for the cache's budget).
    pub(crate) fn bytes(&self) -> usize {
        96 + self.mask.len()
            + self.shape.key.len()
            + self.shape.constants.len() * 16
            + self.runs.iter().map(|(_, b)| 40 + b.as_ref().map_or(0, |b| b.len())).sum::<usize>()
    }
}

/// Spans of a template's text written out as they move to another text
/// ([`Template::spans_of`]).
struct Moved<'a> {
    spans: &'a [Range<usize>],
    out: SmallVec<[Range<usize>; 4]>,
    /// Span ends written so far (two per span).
    next: usize,
    /// The position of the next end to write (`usize::MAX` after the last).
    pending: usize,
}

impl<'a> Moved<'a> {
    fn new(spans: &'a [Range<usize>]) -> Self {
        let pending = spans.first().map_or(usize::MAX, |s| s.start);
        Moved { spans, out: SmallVec::with_capacity(spans.len()), next: 0, pending }
    }

    /// Writes the span ends before `limit`, moved by `shift`.
    #[inline]
    fn up_to(&mut self, limit: usize, shift: isize) {
        while self.pending < limit {
            let at = (self.pending as isize + shift).max(0) as usize;
            if self.next % 2 == 0 {
                self.out.push(at..at);
            } else if let Some(last) = self.out.last_mut() {
                last.end = at;
            }
            self.next += 1;
            self.pending = match self.spans.get(self.next / 2) {
                Some(span) if self.next % 2 == 0 => span.start,
                Some(span) => span.end,
                None => usize::MAX,
            };
        }
    }
}

/// Whether the digits `text` are a value PostgreSQL reads as an `Iconst`
/// (a 32-bit integer; larger ones are `Fconst`).
fn fits_int32(text: &str) -> bool {
    text.len() <= 9 || (text.len() <= 19 && text.parse::<u64>().is_ok_and(|v| v <= i32::MAX as u64))
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

    #[test]
    fn the_word_at_a_time_digit_search_finds_what_a_byte_search_finds() {
        // Every byte value in every position of a chunk, and around chunk
        // edges, from every start.
        let mut texts: Vec<Vec<u8>> = Vec::new();
        for b in 0..=255u8 {
            for pos in 0..17 {
                let mut t = vec![b'a'; 19];
                t[pos] = b;
                texts.push(t);
            }
        }
        texts.push("é9 ñ 7 ç".as_bytes().to_vec());
        texts.push(b"SELECT abalance FROM pgbench_accounts WHERE aid = 123456;".to_vec());
        texts.push((0..=255u8).collect());
        texts.push(Vec::new());
        for t in &texts {
            for from in 0..=t.len() + 1 {
                let expected = t.get(from..).and_then(|r| r.iter().position(u8::is_ascii_digit)).map(|i| from + i);
                assert_eq!(next_digit(t, from), expected, "{t:?} from {from}");
            }
        }
    }

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
            assert_eq!(text_offset(&s.constants, k), i);
        }
        assert_eq!(text_offset(&s.constants, s.key_offset(sql.len())), sql.len());
        assert_eq!(s.key_offset(0), 0);
    }

    /// The shape derived from a template, checked against the scanner's.
    fn derived(scanned: &str, other: &str) -> Option<Shape> {
        let mask = DigitMask::of(scanned)?;
        let template = Template::new(scanned, &mask, &Shape::of(scanned)?)?;
        let shape = template.derive(other)?;
        assert_eq!(Some(&shape), Shape::of(other).as_ref(), "derived from {scanned:?} for {other:?}");
        Some(shape)
    }

    #[test]
    fn a_mask_is_hashed_as_its_written_key() {
        let state = foldhash::quality::RandomState::default();
        let a = DigitMask::of("SELECT * FROM t1 WHERE id = 42 AND x = '7'").unwrap();
        let b = DigitMask::of("SELECT * FROM t9 WHERE id = 1234567 AND x = '0'").unwrap();
        assert_eq!(a.key(), "SELECT * FROM t\0 WHERE id = \0 AND x = '\0'");
        assert_eq!(a.key(), b.key());
        assert_eq!(a.hash(&state), b.hash(&state));
        for other in
            ["SELECT * FROM t1 WHERE id = 42 AND x = '7' ", "SELECT * FROM t1 WHERE id = 42 AND x = 7", "1", "12"]
        {
            assert_ne!(a.key(), DigitMask::of(other).unwrap().key(), "{other}");
        }
        assert_eq!(DigitMask::of("1").unwrap().key(), "\0");
        assert!(DigitMask::of("no digits").is_none());
    }

    #[test]
    fn a_template_fits_only_texts_of_its_mask() {
        let scanned = "SELECT * FROM t1 WHERE id = 42 AND x = '7'";
        for other in [
            "SELECT * FROM t1 WHERE id = 42 AND x = '7' ",
            "SELECT * FROM t1 WHERE id = 42 AND x = '7",
            "SELECT * FROM t1 WHERE id = 4a2 AND x = '7'",
            "SELECT * FROM t1 WHERE id =  AND x = '7'",
            "SELECT * FROM t1 WHERE id = 42 AND x = '77'",
            "SELECT * FROM t11 WHERE id = 42 AND x = '7'",
            "SELECT * FROM t1 WHERE id = 42 AND x = '7'1",
            "SELECT * FROM t1 WHERE id = 42 AND x = '7\"",
            "SELECT * FROM t1 WHERE id = 42 OR  x = '7'",
            "select * FROM t1 WHERE id = 42 AND x = '7'",
            "",
        ] {
            assert!(derived(scanned, other).is_none(), "{other:?}");
        }
        assert!(derived(scanned, "SELECT * FROM t1 WHERE id = 4 AND x = '7'").is_some());
        assert!(derived("SELECT 1", "SELECT 123456").is_some());
        assert!(derived("SELECT 1", "SELECT 1 ").is_none());
        assert!(derived("1", "").is_none());
    }

    #[test]
    fn integer_constants_vary_without_a_scan() {
        let pgbench = [
            ("UPDATE pgbench_accounts SET abalance = abalance + -2345 WHERE aid = 12345;",
             "UPDATE pgbench_accounts SET abalance = abalance + -7 WHERE aid = 999999999;"),
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 1;", "SELECT abalance FROM pgbench_accounts WHERE aid = 0001;"),
            ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, -4, CURRENT_TIMESTAMP);",
             "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (10, 20, 30, -40000, CURRENT_TIMESTAMP);"),
            ("SELECT a1, 'x2', 3 FROM t4 WHERE b = 5", "SELECT a1, 'x2', 33333 FROM t4 WHERE b = 55"),
            ("SELECT 1; SELECT 'abc', 22; SELECT 3", "SELECT 1000; SELECT 'abc', 2; SELECT 300"),
            ("SELECT 1..5", "SELECT 2..5"),
        ];
        for (scanned, other) in pgbench {
            assert!(derived(scanned, other).is_some(), "{scanned:?} → {other:?}");
        }
    }

    #[test]
    fn other_digits_must_stay_as_they_were() {
        let scanned_and_other = [
            // In names, strings, comments, parameters, longer constants.
            ("SELECT * FROM t1 WHERE a = 1", "SELECT * FROM t2 WHERE a = 1"),
            ("SELECT 'a1' FROM t WHERE a = 1", "SELECT 'a2' FROM t WHERE a = 1"),
            ("SELECT $$1$$ FROM t WHERE a = 1", "SELECT $$2$$ FROM t WHERE a = 1"),
            ("SELECT \"c1\" FROM t WHERE a = 1", "SELECT \"c2\" FROM t WHERE a = 1"),
            ("SELECT a /* 1 */ FROM t WHERE a = 1", "SELECT a /* 2 */ FROM t WHERE a = 1"),
            ("SELECT a -- 1\n FROM t WHERE a = 1", "SELECT a -- 2\n FROM t WHERE a = 1"),
            ("SELECT $1 FROM t WHERE a = 1", "SELECT $2 FROM t WHERE a = 1"),
            ("SELECT 1.5 FROM t WHERE a = 1", "SELECT 1.6 FROM t WHERE a = 1"),
            ("SELECT 1e5 FROM t WHERE a = 1", "SELECT 1e6 FROM t WHERE a = 1"),
            ("SELECT 0x1F FROM t WHERE a = 1", "SELECT 0x2F FROM t WHERE a = 1"),
            ("SELECT 1_000 FROM t WHERE a = 1", "SELECT 1_001 FROM t WHERE a = 1"),
            ("SELECT x::varchar(10) FROM t WHERE a = 1", "SELECT x::varchar(20) FROM t WHERE a = 1"),
            ("SELECT 5000000000 FROM t WHERE a = 1", "SELECT 5 FROM t WHERE a = 1"),
            // An integer constant that would become a numeric one.
            ("SELECT 2147483647 FROM t", "SELECT 2147483648 FROM t"),
            ("SELECT 7 FROM t", "SELECT 00000000000000000000007 FROM t"),
        ];
        for (scanned, other) in scanned_and_other {
            let shape = derived(scanned, other);
            // Either nothing is derived (the scanner runs), or what is
            // derived is exactly the scanner's (checked in `derived`) and
            // the digits that differ were an integer constant's.
            if let Some(shape) = shape {
                assert_eq!(Some(&shape.key), Shape::of(scanned).map(|s| s.key).as_ref(), "{scanned:?} → {other:?}");
            }
        }
        // The cases that must not be derived at all.
        assert!(derived("SELECT * FROM t1 WHERE a = 1", "SELECT * FROM t2 WHERE a = 1").is_none());
        assert!(derived("SELECT $1 FROM t WHERE a = 1", "SELECT $2 FROM t WHERE a = 1").is_none());
        assert!(derived("SELECT 1.5 FROM t WHERE a = 1", "SELECT 1.6 FROM t WHERE a = 1").is_none());
        assert!(derived("SELECT 2147483647 FROM t", "SELECT 2147483648 FROM t").is_none());
        assert!(derived("SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a = 1 + 2").is_none());
        assert!(derived("SELECT 'a'", "SELECT 'b'").is_none(), "no digit: no template");
    }

    /// Random texts from fragments that stress the scanner's rules around
    /// digits; a second text with some digit runs changed. Whenever a
    /// template derives a shape, it is the scanner's.
    #[test]
    fn derived_shapes_are_the_scanners() {
        use rand::{Rng, SeedableRng};
        const FRAGMENTS: &[&str] = &[
            "SELECT ",
            "1",
            "23",
            "007",
            "2147483647",
            "99999999999",
            " ",
            " ",
            " ",
            "'",
            "'a1'",
            "\"",
            "\"c2\"",
            "$",
            "$1",
            "$$",
            "$q$",
            "$q1$",
            "--",
            "/*",
            "*/",
            "\n",
            "e",
            "E",
            "x",
            "X",
            "b",
            "B",
            "o",
            "0x",
            "0o",
            "0b",
            "_",
            ".",
            "..",
            "+",
            "-",
            "::",
            "t",
            "t1",
            "\\",
            "(",
            ")",
            ",",
            ";",
            "e5",
            "1e",
            "1.",
            ".5",
            "abc",
            "FROM ",
            "E'",
            "B'",
            "X'",
            "N'",
            "n",
            ":",
            "[",
            "]",
            "=",
            "<",
            ">",
            "!",
            "~",
            "@",
            "#",
            "%",
            "^",
            "&",
            "|",
            "`",
            "?",
            "x1_2",
            "\t",
            "é",
            "1_0",
        ];
        const DIGITS: &[&str] =
            &["0", "5", "42", "000123", "999999999", "2147483647", "2147483648", "12345678901234567890123", "1"];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let (mut tried, mut hits) = (0, 0);
        for _ in 0..100_000 {
            let n = rng.gen_range(1..14);
            let text: String = (0..n).map(|_| FRAGMENTS[rng.gen_range(0..FRAGMENTS.len())]).collect();
            let Some(mask) = DigitMask::of(&text) else { continue };
            let Some(shape) = Shape::of(&text) else { continue };
            let Some(template) = Template::new(&text, &mask, &shape) else { continue };
            for _ in 0..4 {
                let mut other = String::new();
                let mut copied = 0;
                for r in &mask.runs {
                    other.push_str(&text[copied..r.start]);
                    if rng.gen_bool(0.7) {
                        other.push_str(DIGITS[rng.gen_range(0..DIGITS.len())]);
                    } else {
                        other.push_str(&text[r.clone()]);
                    }
                    copied = r.end;
                }
                other.push_str(&text[copied..]);
                tried += 1;
                // Now and then a text that differs elsewhere too: a
                // fragment in, a byte out, a byte changed.
                match rng.gen_range(0..8) {
                    0 => {
                        let at = (0..=rng.gen_range(0..=other.len())).rev().find(|&i| other.is_char_boundary(i));
                        other.insert_str(at.unwrap_or(0), FRAGMENTS[rng.gen_range(0..FRAGMENTS.len())]);
                    }
                    1 if !other.is_empty() => {
                        let at = rng.gen_range(0..other.len());
                        if other.is_char_boundary(at) && other.is_char_boundary(at + 1) {
                            other.remove(at);
                        }
                    }
                    2 if !other.is_empty() => {
                        let at = rng.gen_range(0..other.len());
                        if other.is_char_boundary(at) && other.is_char_boundary(at + 1) {
                            let by = [" ", "'", "$", "x", "-", "\n", ";"][rng.gen_range(0..7)];
                            other.replace_range(at..at + 1, by);
                        }
                    }
                    _ => {}
                }
                tried += 1;
                if let Some(derived) = template.derive(&other) {
                    hits += 1;
                    assert_eq!(Some(derived), Shape::of(&other), "derived from {text:?} for {other:?}");
                    let other_mask = DigitMask::of(&other).map(|m| m.key());
                    assert_eq!(other_mask.as_ref(), Some(&template.mask), "{text:?} → {other:?}");
                }
            }
        }
        assert!(tried > 10_000 && hits > 2_000, "the test must exercise derivation: {tried} tried, {hits} derived");
    }
}
