//! COPY's line formats, one row per `CopyData` message: the text format
//! (fields separated by a tab, `\N` for NULL, and backslash escapes
//! (`\n`, `\t`, `\\`...), as PostgreSQL's `COPY ... (FORMAT text)` writes
//! it with the default options), and CSV with its options ([`Csv`]).
//!
//! [`split_line`] and [`split_csv_line`] read a line into field values,
//! borrowing every field without an escape from the line;
//! [`copy_data_line`] and [`csv_data_line`] write a row back as one
//! `CopyData` message.
//!
//! ```
//! use bytes::BytesMut;
//! use pg_proxy::codec::copy;
//! let mut row = Vec::new();
//! let newline = copy::split_line(b"1\tAda\\tL.\t\\N\n", &mut row);
//! assert!(newline);
//! assert_eq!(row, vec![Some(b"1".as_slice().into()), Some(b"Ada\tL.".to_vec().into()), None]);
//! let mut out = BytesMut::new();
//! copy::copy_data_line(&mut out, &row, newline).unwrap();
//! assert_eq!(&out[5..], b"1\tAda\\tL.\t\\N\n");
//! ```

use std::borrow::Cow;

use bytes::BytesMut;

use super::CodecError;

/// Splits one text-format line (with or without its final `\n`) into its
/// fields, appended to `row` after emptying it: `None` for `\N`, borrowed
/// when the field has no escape. Returns whether the line ended with `\n`.
pub fn split_line<'a>(line: &'a [u8], row: &mut Vec<Option<Cow<'a, [u8]>>>) -> bool {
    row.clear();
    let (body, newline) = match line.strip_suffix(b"\n") {
        Some(b) => (b, true),
        None => (line, false),
    };
    row.extend(body.split(|b| *b == b'\t').map(unescape));
    newline
}

/// One text-format field: `None` for `\N`, borrowed when it has no escape.
pub fn unescape(field: &[u8]) -> Option<Cow<'_, [u8]>> {
    if field == b"\\N" {
        return None;
    }
    if !field.contains(&b'\\') {
        return Some(Cow::Borrowed(field));
    }
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter().copied();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'b') => out.push(8),
            Some(b'f') => out.push(12),
            Some(b'v') => out.push(11),
            // `\x` and one or two hex digits, as PostgreSQL reads them.
            Some(b'x') if bytes.clone().next().is_some_and(|b| b.is_ascii_hexdigit()) => {
                let mut value = 0u8;
                for _ in 0..2 {
                    match bytes.clone().next().and_then(|b| char::from(b).to_digit(16)) {
                        Some(d) => {
                            value = value.wrapping_mul(16).wrapping_add(d as u8);
                            bytes.next();
                        }
                        None => break,
                    }
                }
                out.push(value);
            }
            // `\` and one to three octal digits.
            Some(first @ b'0'..=b'7') => {
                let mut value = first - b'0';
                for _ in 0..2 {
                    match bytes.clone().next() {
                        Some(d @ b'0'..=b'7') => {
                            value = value.wrapping_mul(8).wrapping_add(d - b'0');
                            bytes.next();
                        }
                        _ => break,
                    }
                }
                out.push(value);
            }
            Some(other) => out.push(other),
            None => out.push(b'\\'),
        }
    }
    Some(Cow::Owned(out))
}

/// Appends `value` to `out` with the escapes the text format needs.
pub fn escape(value: &[u8], out: &mut BytesMut) {
    let mut plain = 0;
    for (i, &b) in value.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            8 => b"\\b",
            12 => b"\\f",
            11 => b"\\v",
            _ => continue,
        };
        out.extend_from_slice(value.get(plain..i).unwrap_or_default());
        out.extend_from_slice(escaped);
        plain = i + 1;
    }
    out.extend_from_slice(value.get(plain..).unwrap_or_default());
}

/// Appends one `CopyData` message holding `row` as a text-format line
/// (ending with `\n` when `newline`). Fails, leaving `out` as it was, when
/// the message would not fit a length word.
pub fn copy_data_line<T: AsRef<[u8]>>(out: &mut BytesMut, row: &[Option<T>], newline: bool) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(b"d\0\0\0\0");
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\t");
        }
        match value {
            None => out.extend_from_slice(b"\\N"),
            Some(v) => escape(v.as_ref(), out),
        }
    }
    if newline {
        out.extend_from_slice(b"\n");
    }
    finish_copy_data(out, start)
}

/// Writes the length word of the `CopyData` message that starts at `start`
/// of `out`; drops the message when it is too long for one.
fn finish_copy_data(out: &mut BytesMut, start: usize) -> Result<(), CodecError> {
    let Ok(len) = i32::try_from(out.len() - start - 1) else {
        let len = out.len() - start - 1;
        out.truncate(start);
        return Err(CodecError::TooLarge { kind: 'd', len, max: i32::MAX as usize });
    };
    if let Some(word) = out.get_mut(start + 1..start + 5) {
        word.copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// PostgreSQL's CSV format as a COPY's options set it (see
/// [`policy_core::CsvLayout`]): the delimiter, quote and escape bytes and
/// the NULL string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Csv<'a> {
    /// The byte between columns.
    pub delimiter: u8,
    /// The byte around quoted values.
    pub quote: u8,
    /// The byte before a quote or escape byte inside quotes.
    pub escape: u8,
    /// NULL, written unquoted.
    pub null: &'a [u8],
}

/// A CSV line that is not as PostgreSQL writes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsvError {
    /// A quoted value runs to the end of the line.
    #[error("a quoted value is not closed by the end of the line")]
    Unclosed,
    /// A quote byte inside a value that does not start with one.
    #[error("a quote inside an unquoted value, at byte {0}")]
    StrayQuote(usize),
    /// Something other than a delimiter or the line's end after a closing quote.
    #[error("byte {0} follows a closing quote where a delimiter was expected")]
    AfterQuote(usize),
}

/// Splits one CSV line (one `CopyData` message's body, with or without its
/// final `\n`) into its fields, appended to `row` after emptying it, and
/// whether each was quoted to `quoted`: `None` for an unquoted NULL
/// string, borrowed when the value has no escaped byte. Returns whether the
/// line ended with `\n`.
///
/// Only lines as PostgreSQL writes them are read: a quote byte inside an
/// unquoted value, or anything but a delimiter after a closing quote, is an
/// error (the caller then stops the COPY rather than guess).
///
/// ```
/// use bytes::BytesMut;
/// use pg_proxy::codec::copy::{self, Csv};
/// let csv = Csv { delimiter: b',', quote: b'"', escape: b'"', null: b"" };
/// let (mut row, mut quoted) = (Vec::new(), Vec::new());
/// let newline = copy::split_csv_line(b"1,\"Ada \"\"L\"\", ,x\",,\"\"\n", &csv, &mut row, &mut quoted).unwrap();
/// assert!(newline);
/// assert_eq!(row, vec![Some(b"1".as_slice().into()), Some(b"Ada \"L\", ,x".to_vec().into()), None, Some(b"".as_slice().into())]);
/// assert_eq!(quoted, [false, true, false, true]);
/// let mut out = BytesMut::new();
/// copy::csv_data_line(&mut out, &row, &quoted, &csv, newline).unwrap();
/// assert_eq!(&out[5..], b"1,\"Ada \"\"L\"\", ,x\",,\"\"\n");
/// ```
pub fn split_csv_line<'a>(
    line: &'a [u8],
    csv: &Csv<'_>,
    row: &mut Vec<Option<Cow<'a, [u8]>>>,
    quoted: &mut Vec<bool>,
) -> Result<bool, CsvError> {
    row.clear();
    quoted.clear();
    let (body, newline) = match line.strip_suffix(b"\n") {
        Some(b) => (b, true),
        None => (line, false),
    };
    let mut at = 0;
    loop {
        if body.get(at) == Some(&csv.quote) {
            let (value, end) = quoted_value(body, at + 1, csv)?;
            row.push(Some(value));
            quoted.push(true);
            at = end;
            match body.get(at) {
                None => return Ok(newline),
                Some(b) if *b == csv.delimiter => at += 1,
                Some(_) => return Err(CsvError::AfterQuote(at)),
            }
            continue;
        }
        let rest = body.get(at..).unwrap_or_default();
        let len = rest.iter().position(|b| *b == csv.delimiter).unwrap_or(rest.len());
        let value = rest.get(..len).unwrap_or_default();
        if let Some(i) = value.iter().position(|b| *b == csv.quote) {
            return Err(CsvError::StrayQuote(at + i));
        }
        row.push((value != csv.null).then_some(Cow::Borrowed(value)));
        quoted.push(false);
        at += len;
        if at >= body.len() {
            return Ok(newline);
        }
        at += 1;
    }
}

/// The quoted value that starts at `start` (after its opening quote), and
/// where its closing quote ends.
fn quoted_value<'a>(body: &'a [u8], start: usize, csv: &Csv<'_>) -> Result<(Cow<'a, [u8]>, usize), CsvError> {
    let mut owned: Option<Vec<u8>> = None;
    let mut plain = start;
    let mut at = start;
    loop {
        let b = *body.get(at).ok_or(CsvError::Unclosed)?;
        // The escape byte first: with the default escape (the quote
        // itself), a doubled quote is one quote, a single one closes.
        if b == csv.escape {
            if let Some(&next) = body.get(at + 1).filter(|n| **n == csv.quote || **n == csv.escape) {
                let out = owned.get_or_insert_with(Vec::new);
                out.extend_from_slice(body.get(plain..at).unwrap_or_default());
                out.push(next);
                at += 2;
                plain = at;
                continue;
            }
        }
        if b == csv.quote {
            let tail = body.get(plain..at).unwrap_or_default();
            let value = match owned {
                Some(mut out) => {
                    out.extend_from_slice(tail);
                    Cow::Owned(out)
                }
                None => Cow::Borrowed(tail),
            };
            return Ok((value, at + 1));
        }
        at += 1;
    }
}

/// Appends one `CopyData` message holding `row` as a CSV line (ending with
/// `\n` when `newline`), as PostgreSQL writes one: NULL as the NULL string
/// unquoted; a value quoted when `quoted` says it was (a value written back
/// keeps the server's quoting, and so `FORCE_QUOTE`) or when it needs quotes
/// (it holds the delimiter, the quote, `\r` or `\n`, equals the NULL
/// string, or is `\.` alone on its line); inside quotes, the quote and
/// escape bytes preceded by the escape byte. Fails, leaving `out` as it was,
/// when the message would not fit a length word.
pub fn csv_data_line<T: AsRef<[u8]>>(
    out: &mut BytesMut,
    row: &[Option<T>],
    quoted: &[bool],
    csv: &Csv<'_>,
    newline: bool,
) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(b"d\0\0\0\0");
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(&[csv.delimiter]);
        }
        let Some(value) = value else {
            out.extend_from_slice(csv.null);
            continue;
        };
        let value = value.as_ref();
        let needs_quotes = value.iter().any(|b| [csv.delimiter, csv.quote, b'\r', b'\n'].contains(b))
            || value == csv.null
            || (row.len() == 1 && value == b"\\.");
        if !needs_quotes && !quoted.get(i).copied().unwrap_or(false) {
            out.extend_from_slice(value);
            continue;
        }
        out.extend_from_slice(&[csv.quote]);
        let mut plain = 0;
        for (j, &b) in value.iter().enumerate() {
            if b == csv.quote || b == csv.escape {
                out.extend_from_slice(value.get(plain..j).unwrap_or_default());
                out.extend_from_slice(&[csv.escape]);
                plain = j;
            }
        }
        out.extend_from_slice(value.get(plain..).unwrap_or_default());
        out.extend_from_slice(&[csv.quote]);
    }
    if newline {
        out.extend_from_slice(b"\n");
    }
    finish_copy_data(out, start)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;

    #[test]
    fn text_fields_round_trip() {
        for field in [&b"plain"[..], b"tab\\there", b"back\\\\slash", b"new\\nline", b"cr\\r"] {
            let decoded = unescape(field).unwrap();
            let mut out = BytesMut::new();
            escape(&decoded, &mut out);
            assert_eq!(&out[..], field);
        }
        assert_eq!(unescape(b"\\N"), None);
        assert!(matches!(unescape(b"plain"), Some(Cow::Borrowed(_))));
    }

    #[test]
    fn octal_and_hex_escapes_read_as_postgresql_reads_them() {
        assert_eq!(unescape(b"\\101\\x41\\x4g\\7"), Some(Cow::Owned(b"AA\x04g\x07".to_vec())));
        assert_eq!(unescape(b"\\xz"), Some(Cow::Owned(b"xz".to_vec())));
        let mut out = BytesMut::new();
        escape(&[8, 12, 11], &mut out);
        assert_eq!(&out[..], b"\\b\\f\\v");
    }

    #[test]
    fn a_line_without_newline_is_written_back_without_one() {
        let mut row = Vec::new();
        assert!(!split_line(b"a\tb", &mut row));
        let mut out = BytesMut::new();
        copy_data_line(&mut out, &row, false).unwrap();
        assert_eq!(&out[..], b"d\0\0\0\x07a\tb");
    }

    const DEFAULT_CSV: Csv<'static> = Csv { delimiter: b',', quote: b'"', escape: b'"', null: b"" };

    fn csv_line(line: &[u8], csv: &Csv<'_>) -> (Vec<Option<Vec<u8>>>, Vec<bool>) {
        let (mut row, mut quoted) = (Vec::new(), Vec::new());
        split_csv_line(line, csv, &mut row, &mut quoted).unwrap();
        (row.into_iter().map(|v| v.map(Cow::into_owned)).collect(), quoted)
    }

    fn written(row: &[Option<&[u8]>], quoted: &[bool], csv: &Csv<'_>) -> Vec<u8> {
        let mut out = BytesMut::new();
        csv_data_line(&mut out, row, quoted, csv, true).unwrap();
        assert_eq!(u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize, out.len() - 1);
        out[5..].to_vec()
    }

    #[test]
    fn csv_lines_round_trip_byte_for_byte() {
        let custom = Csv { delimiter: b';', quote: b'\'', escape: b'\\', null: b"NULL" };
        for (csv, line) in [
            (&DEFAULT_CSV, &b"1,plain,,\"\"\n"[..]),
            (&DEFAULT_CSV, b"\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\"cr\r\"\n"),
            (&DEFAULT_CSV, b"\"forced\",\"\",x"),
            (&custom, b"1;'it\\'s';NULL;'NULL';'back\\\\slash';\"as is\"\n"),
        ] {
            let (row, quoted) = csv_line(line, csv);
            let row: Vec<Option<&[u8]>> = row.iter().map(Option::as_deref).collect();
            let mut out = BytesMut::new();
            csv_data_line(&mut out, &row, &quoted, csv, line.ends_with(b"\n")).unwrap();
            assert_eq!(&out[5..], line, "{}", String::from_utf8_lossy(line));
        }
        // What the values are.
        let (row, _) = csv_line(b"\"a,b\",\"say \"\"hi\"\"\",,\"\"", &DEFAULT_CSV);
        assert_eq!(row, [Some(b"a,b".to_vec()), Some(b"say \"hi\"".to_vec()), None, Some(Vec::new())]);
        let (row, _) = csv_line(b"'it\\'s';NULL;'NULL';a\\b", &custom);
        assert_eq!(row, [Some(b"it's".to_vec()), None, Some(b"NULL".to_vec()), Some(b"a\\b".to_vec())]);
    }

    #[test]
    fn csv_values_are_quoted_when_they_need_it_or_were() {
        let one = |v: &[u8], was: bool| written(&[Some(v)], &[was], &DEFAULT_CSV);
        assert_eq!(one(b"plain", false), b"plain\n");
        assert_eq!(one(b"plain", true), b"\"plain\"\n", "a quoted value stays quoted (FORCE_QUOTE)");
        assert_eq!(one(b"a,b", false), b"\"a,b\"\n");
        assert_eq!(one(b"say \"x\"", false), b"\"say \"\"x\"\"\"\n");
        assert_eq!(one(b"two\nlines", false), b"\"two\nlines\"\n");
        assert_eq!(one(b"cr\r", false), b"\"cr\r\"\n");
        assert_eq!(one(b"", false), b"\"\"\n", "the NULL string as a value is quoted");
        assert_eq!(one(b"\\.", false), b"\"\\.\"\n", "the end-of-data marker alone on a line is quoted");
        assert_eq!(written(&[Some(b"\\."), None], &[false, false], &DEFAULT_CSV), b"\\.,\n");
        let custom = Csv { delimiter: b'|', quote: b'\'', escape: b'\\', null: b"\\N" };
        assert_eq!(written(&[Some(b"it's \\ |"), None], &[false, false], &custom), b"'it\\'s \\\\ |'|\\N\n");
    }

    #[test]
    fn csv_lines_postgresql_does_not_write_are_errors() {
        let split = |line: &[u8]| split_csv_line(line, &DEFAULT_CSV, &mut Vec::new(), &mut Vec::new());
        assert_eq!(split(b"1,\"open\n"), Err(CsvError::Unclosed));
        assert_eq!(split(b"1,ab\"c\n"), Err(CsvError::StrayQuote(4)));
        assert_eq!(split(b"\"a\"b,c\n"), Err(CsvError::AfterQuote(3)));
        assert_eq!(split(b"\"a\"\"\n"), Err(CsvError::Unclosed));
    }
}
