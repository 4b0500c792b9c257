//! COPY's text format: one row per `CopyData` line, fields separated by a
//! tab, `\N` for NULL, and backslash escapes (`\n`, `\t`, `\\`...), as
//! PostgreSQL's `COPY ... (FORMAT text)` writes it with the default
//! options.
//!
//! [`split_line`] reads a line into field values, borrowing every field
//! without an escape from the line; [`copy_data_line`] writes a row back as
//! one `CopyData` message.
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
}
