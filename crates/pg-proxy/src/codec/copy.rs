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

/// The first bytes of PostgreSQL's binary COPY data.
pub const BINARY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Binary COPY data that is not as PostgreSQL writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BinaryCopyError {
    /// The data does not start with [`BINARY_SIGNATURE`].
    #[error("the data does not start with the binary COPY signature")]
    Signature,
    /// Header flags the gateway cannot read rows under (bit 16: each row
    /// carries an OID, which PostgreSQL 12 and later never send).
    #[error("the binary COPY header has flags {0:#x}, which the gateway does not read")]
    Flags(u32),
    /// A row whose field count is not the COPY's column count.
    #[error("a row of {got} fields in a COPY of {want} columns")]
    FieldCount {
        /// The row's field count.
        got: i16,
        /// The columns the `CopyOutResponse` announced.
        want: usize,
    },
    /// A field length below -1.
    #[error("a field with the impossible length {0}")]
    FieldLength(i32),
    /// Bytes after the end-of-data marker.
    #[error("data after the end-of-data marker")]
    AfterEnd,
    /// One row (or the header) larger than the gateway holds at once.
    #[error("a row of more than {0} bytes")]
    TooLarge(usize),
    /// The data ended inside the header or a row, or without its end marker.
    #[error("the data ended inside a row or without its end marker")]
    Truncated,
}

/// Where a [`BinaryCopy`] is in the data.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum BinaryStage {
    /// The signature, flags and header extension come next.
    #[default]
    Header,
    /// Rows, or the end marker, come next.
    Rows,
    /// The end marker has been read.
    Ended,
    /// The callback stopped the COPY: what follows is dropped.
    Stopped,
}

/// PostgreSQL's binary COPY format, read row by row from the bodies of
/// `CopyData` messages, whose boundaries it does not rely on (the server
/// sends one row per message, the header with the first, but a row may be
/// split): a row that has not fully arrived waits for the next message.
///
/// [`BinaryCopy::feed`] hands each complete row to a callback that may
/// change its values and writes what it read as one `CopyData` message:
/// the header and the end marker as they came, each row as it came when
/// the callback changed nothing, rewritten otherwise. The callback may
/// also stop the COPY (a row cap): that row and everything after it is
/// dropped.
///
/// ```
/// use std::borrow::Cow;
/// use bytes::BytesMut;
/// use pg_proxy::codec::copy::{BinaryCopy, BINARY_SIGNATURE};
/// let mut data = BINARY_SIGNATURE.to_vec();
/// data.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // flags, no extension
/// data.extend_from_slice(&[0, 2, 0, 0, 0, 3, b'A', b'd', b'a', 0xff, 0xff, 0xff, 0xff]); // ("Ada", NULL)
/// data.extend_from_slice(&[0xff, 0xff]); // the end
/// let mut copy = BinaryCopy::new(2, 1 << 20);
/// let mut out = BytesMut::new();
/// // Split anywhere: rows wait for their last byte.
/// for part in data.chunks(7) {
///     copy.feed(part, &mut |row| {
///         row[0] = Some(Cow::Borrowed(b"A*a"));
///         Some(1)
///     }, &mut out).unwrap();
/// }
/// assert!(copy.finish().is_ok());
/// let mut bodies = Vec::new();
/// let mut rest = &out[..];
/// while let [b'd', a, b, c, d, tail @ ..] = rest {
///     let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize - 4;
///     bodies.extend_from_slice(&tail[..len]);
///     rest = &tail[len..];
/// }
/// assert_eq!(bodies.windows(3).filter(|w| w == b"A*a").count(), 1);
/// assert_eq!(bodies.len(), data.len());
/// ```
#[derive(Debug)]
pub struct BinaryCopy {
    columns: usize,
    max_row: usize,
    stage: BinaryStage,
    /// The start of a header or row that has not fully arrived.
    pending: Vec<u8>,
}

/// What one row is read into: its values, borrowed from the data.
pub type BinaryRow<'a> = Vec<Option<Cow<'a, [u8]>>>;

impl BinaryCopy {
    /// A reader for a COPY of `columns` columns that holds at most
    /// `max_row` bytes of a row that has not fully arrived.
    pub fn new(columns: usize, max_row: usize) -> BinaryCopy {
        BinaryCopy { columns, max_row, stage: BinaryStage::Header, pending: Vec::new() }
    }

    /// Reads one `CopyData` body; `mask` gets every complete row and says
    /// how many values it changed, or `None` to stop the COPY there.
    /// Appends one `CopyData` message to `out` when something complete was
    /// read.
    pub fn feed(
        &mut self,
        data: &[u8],
        mask: &mut dyn for<'r> FnMut(&mut BinaryRow<'r>) -> Option<usize>,
        out: &mut BytesMut,
    ) -> Result<(), BinaryCopyError> {
        if self.stage == BinaryStage::Stopped {
            return Ok(());
        }
        let joined;
        let buf: &[u8] = if self.pending.is_empty() {
            data
        } else {
            self.pending.extend_from_slice(data);
            joined = std::mem::take(&mut self.pending);
            &joined
        };
        let start = out.len();
        out.extend_from_slice(b"d\0\0\0\0");
        let read = self.read(buf, mask, out);
        let consumed = match read {
            Ok(consumed) => consumed,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        let rest = match self.stage {
            BinaryStage::Stopped => &[],
            _ => buf.get(consumed..).unwrap_or_default(),
        };
        if rest.len() > self.max_row {
            out.truncate(start);
            return Err(BinaryCopyError::TooLarge(self.max_row));
        }
        self.pending = rest.to_vec();
        if out.len() == start + 5 {
            out.truncate(start);
            return Ok(());
        }
        finish_copy_data(out, start).map_err(|_| BinaryCopyError::TooLarge(i32::MAX as usize))
    }

    /// Whether the data ended where it may: after the end marker (or
    /// after the callback stopped the COPY).
    pub fn finish(&self) -> Result<(), BinaryCopyError> {
        match (self.stage, self.pending.is_empty()) {
            (BinaryStage::Ended, true) | (BinaryStage::Stopped, _) => Ok(()),
            _ => Err(BinaryCopyError::Truncated),
        }
    }

    /// Reads what is complete in `buf`, writing it to `out`; returns how
    /// many bytes it read.
    fn read(
        &mut self,
        buf: &[u8],
        mask: &mut dyn for<'r> FnMut(&mut BinaryRow<'r>) -> Option<usize>,
        out: &mut BytesMut,
    ) -> Result<usize, BinaryCopyError> {
        let mut at = 0;
        let mut row: BinaryRow<'_> = Vec::with_capacity(self.columns);
        loop {
            match self.stage {
                BinaryStage::Header => {
                    let Some(fixed) = buf.get(at..at + 19) else { return Ok(at) };
                    if fixed.get(..11) != Some(BINARY_SIGNATURE.as_slice()) {
                        return Err(BinaryCopyError::Signature);
                    }
                    let flags = be_u32(fixed, 11);
                    // Bits 0-15 are what a reader must understand, bit 16
                    // puts an OID in every row; bits 17-31 may be ignored.
                    if flags & 0x0001_ffff != 0 {
                        return Err(BinaryCopyError::Flags(flags));
                    }
                    let extension = be_u32(fixed, 15) as usize;
                    let end = (at + 19).checked_add(extension).ok_or(BinaryCopyError::TooLarge(self.max_row))?;
                    let Some(header) = buf.get(at..end) else { return Ok(at) };
                    out.extend_from_slice(header);
                    at = end;
                    self.stage = BinaryStage::Rows;
                }
                BinaryStage::Rows => {
                    let Some(&[high, low]) = buf.get(at..at + 2) else { return Ok(at) };
                    let count = i16::from_be_bytes([high, low]);
                    if count == -1 {
                        out.extend_from_slice(&[0xff, 0xff]);
                        at += 2;
                        self.stage = BinaryStage::Ended;
                        continue;
                    }
                    if usize::try_from(count).ok() != Some(self.columns) {
                        return Err(BinaryCopyError::FieldCount { got: count, want: self.columns });
                    }
                    row.clear();
                    let mut p = at + 2;
                    for _ in 0..self.columns {
                        let Some(&[a, b, c, d]) = buf.get(p..p + 4) else { return Ok(at) };
                        let len = i32::from_be_bytes([a, b, c, d]);
                        p += 4;
                        if len == -1 {
                            row.push(None);
                            continue;
                        }
                        let len = usize::try_from(len).map_err(|_| BinaryCopyError::FieldLength(len))?;
                        if len > self.max_row {
                            return Err(BinaryCopyError::TooLarge(self.max_row));
                        }
                        let Some(value) = buf.get(p..p + len) else { return Ok(at) };
                        row.push(Some(Cow::Borrowed(value)));
                        p += len;
                    }
                    let Some(changed) = mask(&mut row) else {
                        self.stage = BinaryStage::Stopped;
                        return Ok(buf.len());
                    };
                    if changed == 0 {
                        out.extend_from_slice(buf.get(at..p).unwrap_or_default());
                    } else {
                        out.extend_from_slice(&count.to_be_bytes());
                        for value in &row {
                            match value {
                                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                                Some(v) => {
                                    let len = i32::try_from(v.len())
                                        .map_err(|_| BinaryCopyError::TooLarge(i32::MAX as usize))?;
                                    out.extend_from_slice(&len.to_be_bytes());
                                    out.extend_from_slice(v);
                                }
                            }
                        }
                    }
                    at = p;
                }
                BinaryStage::Ended if at < buf.len() => return Err(BinaryCopyError::AfterEnd),
                BinaryStage::Ended | BinaryStage::Stopped => return Ok(at),
            }
        }
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    match bytes.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
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

    /// Binary COPY data: a header, then `rows`, then the end marker.
    fn binary_data(rows: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut data = BINARY_SIGNATURE.to_vec();
        data.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        for row in rows {
            data.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for v in *row {
                match v {
                    None => data.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        data.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        data.extend_from_slice(v);
                    }
                }
            }
        }
        data.extend_from_slice(&[0xff, 0xff]);
        data
    }

    /// The bodies of the `CopyData` messages in `out`, joined.
    fn bodies(out: &[u8]) -> Vec<u8> {
        let mut joined = Vec::new();
        let mut rest = out;
        while let [b'd', a, b, c, d, tail @ ..] = rest {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize - 4;
            joined.extend_from_slice(&tail[..len]);
            rest = &tail[len..];
        }
        assert!(rest.is_empty(), "only CopyData messages");
        joined
    }

    /// Feeds `data` in pieces of `piece` bytes, masking column 1 to `***`.
    fn masked_binary(data: &[u8], piece: usize, columns: usize) -> Result<Vec<u8>, BinaryCopyError> {
        let mut reader = BinaryCopy::new(columns, 1 << 16);
        let mut out = BytesMut::new();
        for part in data.chunks(piece) {
            reader.feed(
                part,
                &mut |row| match row.get_mut(1) {
                    Some(v @ Some(_)) => {
                        *v = Some(Cow::Borrowed(b"***"));
                        Some(1)
                    }
                    _ => Some(0),
                },
                &mut out,
            )?;
        }
        reader.finish()?;
        Ok(bodies(&out))
    }

    #[test]
    fn binary_rows_are_rewritten_wherever_the_messages_split_them() {
        let data = binary_data(&[&[Some(b"1"), Some(b"123-45-6789")], &[Some(b"2"), None], &[None, Some(b"")]]);
        let want = binary_data(&[&[Some(b"1"), Some(b"***")], &[Some(b"2"), None], &[None, Some(b"***")]]);
        for piece in 1..=data.len() {
            assert_eq!(masked_binary(&data, piece, 2), Ok(want.clone()), "pieces of {piece}");
        }
        // Nothing changed: the bytes as they came.
        let clean = binary_data(&[&[Some(b"1"), None]]);
        assert_eq!(masked_binary(&clean, 5, 2), Ok(clean.clone()));
        // No rows; a header extension is passed on.
        let mut extended = BINARY_SIGNATURE.to_vec();
        extended.extend_from_slice(&[0, 2, 0, 0, 0, 0, 0, 3, 9, 9, 9, 0xff, 0xff]);
        assert_eq!(masked_binary(&extended, 4, 2), Ok(extended.clone()), "bits 17-31 may be ignored");
    }

    #[test]
    fn binary_data_postgresql_does_not_write_is_an_error() {
        let good = binary_data(&[&[Some(b"1"), Some(b"x")]]);
        let mut bad_signature = good.clone();
        bad_signature[0] = b'X';
        assert_eq!(masked_binary(&bad_signature, 64, 2), Err(BinaryCopyError::Signature));
        let mut oids = good.clone();
        oids[12] = 1; // bit 16
        assert_eq!(masked_binary(&oids, 64, 2), Err(BinaryCopyError::Flags(0x1_0000)));
        assert_eq!(masked_binary(&good, 64, 3), Err(BinaryCopyError::FieldCount { got: 2, want: 3 }));
        let mut negative = good.clone();
        negative[21..25].copy_from_slice(&(-2i32).to_be_bytes());
        assert_eq!(masked_binary(&negative, 64, 2), Err(BinaryCopyError::FieldLength(-2)));
        let mut after = good.clone();
        after.push(0);
        assert_eq!(masked_binary(&after, 64, 2), Err(BinaryCopyError::AfterEnd));
        assert_eq!(masked_binary(&good[..good.len() - 2], 64, 2), Err(BinaryCopyError::Truncated));
        assert_eq!(masked_binary(&good[..good.len() - 5], 7, 2), Err(BinaryCopyError::Truncated));
        let mut huge = good.clone();
        huge[21..25].copy_from_slice(&(1i32 << 20).to_be_bytes());
        assert_eq!(masked_binary(&huge, 64, 2), Err(BinaryCopyError::TooLarge(1 << 16)));
        // A row that never completes is held up to the limit, not beyond.
        let mut reader = BinaryCopy::new(1, 64);
        let mut out = BytesMut::new();
        let mut header = BINARY_SIGNATURE.to_vec();
        header.extend_from_slice(&[0; 8]);
        header.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        reader.feed(&header, &mut |_| Some(0), &mut out).unwrap();
        assert_eq!(reader.feed(&[b'x'; 59], &mut |_| Some(0), &mut out), Err(BinaryCopyError::TooLarge(64)));
    }

    #[test]
    fn a_stopped_binary_copy_drops_the_rest() {
        let data = binary_data(&[&[Some(b"1")], &[Some(b"2")], &[Some(b"3")]]);
        let mut reader = BinaryCopy::new(1, 1 << 16);
        let mut out = BytesMut::new();
        let mut seen = 0;
        let mut cap = |_: &mut BinaryRow<'_>| {
            seen += 1;
            (seen <= 2).then_some(0)
        };
        reader.feed(&data, &mut cap, &mut out).unwrap();
        reader.feed(b"anything", &mut cap, &mut out).unwrap();
        assert_eq!(reader.finish(), Ok(()));
        assert_eq!(bodies(&out), data[..19 + 2 * 7].to_vec(), "the header and two rows");
    }
}
